"""The base model (the pretrained model a run starts from): where its folder is, its tokenizer, and
fingerprints of that tokenizer and of its weights."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path

from nerflow.tasks.runtime.files import atomic_write_json, sha256_file
from nerflow.tasks.runtime.hub_access import check_available, explained
from nerflow.tasks.settings import BaseModelSettings

log = logging.getLogger(__name__)


def resolve_model_folder(name: str) -> str:
    """'package:MODULE' names a model folder shipped inside a Python package (MODULE.get_model_path())."""
    if name.startswith("package:"):
        from nerflow.tasks.runtime.errors import InputError

        module = name.removeprefix("package:")
        try:
            return str(importlib.import_module(module).get_model_path())
        except (ImportError, AttributeError) as e:
            raise InputError(
                f"base_model.name {name!r}: no installed package {module} with get_model_path() ({type(e).__name__})"
            ) from e
    return name


def check_base_model(pretrained: BaseModelSettings) -> None:
    """InputError within seconds if the base model cannot be had: a folder without config.json, a
    package that is not installed, a Hub id that is mistyped, gated, or not cached while offline."""
    from nerflow.tasks.runtime.errors import InputError

    what = f"base_model.name {pretrained.name!r}"
    path = Path(resolve_model_folder(pretrained.name)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(
                f"{what}: the folder has no config.json; name a model folder (save_pretrained) or a Hub id"
            )
        return
    if pretrained.name.startswith((".", "/", "~")) or path.exists():
        raise InputError(f"{what}: no such folder")
    check_available(pretrained.name, "model", pretrained.revision, what)


def load_network(name: str | Path, revision: str | None = None, trust_remote_code: bool = False, **options):
    """A token-classification model from safetensors weights only: a pickled .bin file is code
    that runs on load. trust_remote_code runs the model's own Python only when a setting asks."""
    from transformers import AutoModelForTokenClassification

    with explained(f"base_model.name {str(name)!r}"):
        return AutoModelForTokenClassification.from_pretrained(
            resolve_model_folder(str(name)),
            revision=revision,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **options,
        )


def load_tokenizer(pretrained: BaseModelSettings):
    from transformers import AutoTokenizer

    path = resolve_model_folder(pretrained.name)
    options = {"revision": pretrained.revision, "trust_remote_code": pretrained.trust_remote_code}
    with explained(f"base_model.name {pretrained.name!r}"):
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        if getattr(tokenizer, "add_prefix_space", None) is False:
            # Byte-level BPE (RoBERTa, GPT-2 style) marks a word start with a leading space: pre-split words
            # must get one each, or every word after the first is encoded as a continuation.
            tokenizer = AutoTokenizer.from_pretrained(path, add_prefix_space=True, **options)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"base_model.name {pretrained.name!r}: a fast tokenizer is required (word_ids() for label alignment)"
        )
    return tokenizer


# Files that hold weights, not tokenizer state: hashing them is the slow part and changes nothing.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt"}


def tokenizer_fingerprint(pretrained: BaseModelSettings) -> str:
    """What the tokenizer is made of, as a hash: the cache key's tokenizer part.

    A local model folder is fingerprinted by its top-level files (vocabulary, tokenizer.json,
    configs; weights skipped), which needs neither transformers nor a tokenizer load: an unchanged
    re-run finds its cache hit without loading anything. A Hub model is loaded (from the local HF cache
    once downloaded) and hashed by content: vocabulary, normalizer, pre-tokenizer, special tokens."""
    folder = Path(resolve_model_folder(pretrained.name))
    if folder.is_dir():
        h = hashlib.sha256(b"files")
        for file in sorted(f for f in folder.iterdir() if f.is_file() and f.suffix not in WEIGHT_SUFFIXES):
            h.update(file.name.encode() + b"\x00" + hashlib.sha256(file.read_bytes()).digest())
        return h.hexdigest()
    tokenizer = load_tokenizer(pretrained)
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return h.hexdigest()


def weights_fingerprint(pretrained: BaseModelSettings, memo_dir: Path | None = None) -> str:
    """What the pretrained weights are, for cache keys: new weights behind the same name are another model.

    A local folder (or package:) is hashed by its weight files' contents; the hashes are remembered in
    memo_dir by path, size and modification time, so an unchanged model is read once. A Hub id is
    the commit its revision resolves to (online: the Hub's answer; offline: the local snapshot's)."""
    folder = Path(resolve_model_folder(pretrained.name))
    if folder.is_dir():
        memo = _DigestMemo(memo_dir)
        h = hashlib.sha256(b"weights")
        for file in sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES):
            h.update(file.name.encode() + b"\x00" + memo.digest(file).encode())
        memo.save()
        return h.hexdigest()
    return f"hub:{hub_commit(pretrained)}"


def hub_commit(pretrained: BaseModelSettings) -> str:
    """The commit sha a Hub model's revision points to now; offline, the cached snapshot's."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        sha = HfApi().model_info(pretrained.name, revision=pretrained.revision).sha
        if sha:
            return sha
    except Exception as e:  # offline or unreachable: the local cache knows which commit it holds
        log.info(
            "could not ask the Hub for %s's commit (%s); using the local snapshot",
            pretrained.name,
            type(e).__name__,
        )
    try:
        return Path(snapshot_download(pretrained.name, revision=pretrained.revision, local_files_only=True)).name
    except Exception:
        log.warning("%s: no commit known (offline, not cached); cache keys use its name only", pretrained.name)
        return f"unresolved:{pretrained.revision or 'main'}"


class _DigestMemo:
    """sha256 of files, remembered by (path, size, mtime) in a JSON file."""

    def __init__(self, folder: Path | None) -> None:
        self.path = Path(folder) / "weight-digests.json" if folder else None
        try:
            self.known: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in self.known:
            self.known[key] = sha256_file(file)
            self.changed = True
        return self.known[key]

    def save(self) -> None:
        if self.path and self.changed:
            atomic_write_json(self.path, self.known)


def head_labels(pretrained: BaseModelSettings) -> list[str] | None:
    """The labels of the base model's token-classification head (None: it has none, or only LABEL_n)."""
    from transformers import AutoConfig

    with explained(f"base_model.name {pretrained.name!r}"):
        config = AutoConfig.from_pretrained(
            resolve_model_folder(pretrained.name),
            revision=pretrained.revision,
            trust_remote_code=pretrained.trust_remote_code,
        )
    if not any(a.endswith("ForTokenClassification") for a in config.architectures or []):
        return None
    names = [config.id2label[i] for i in range(config.num_labels)]
    return None if all(n.startswith("LABEL_") for n in names) else names


def head_rows(labels: list[str], old: list[str] | None, pretrained: BaseModelSettings) -> dict[int, int]:
    """New label id -> the row of the base model's head it continues (base_model.head, base_model.label_mapping)."""
    from nerflow.tasks.runtime.errors import InputError

    mapping = pretrained.label_mapping or {}
    if mapping and old is None:
        raise InputError(
            f"base_model.label_mapping: {pretrained.name} has no token-classification head with named labels"
        )
    problems = [f"{k!r} is not a dataset label {labels}" for k in mapping if k not in labels]
    problems += [
        f"{v!r} is not a label of {pretrained.name}'s head {old}" for v in mapping.values() if old and v not in old
    ]
    if problems:
        raise InputError("base_model.label_mapping: " + "; ".join(problems))
    if pretrained.head == "fresh" or old is None:
        if pretrained.head == "reuse":
            raise InputError(
                f"base_model.head=reuse: {pretrained.name} has no token-classification head with named labels"
            )
        return {}
    rows = {i: old.index(mapping.get(n, n)) for i, n in enumerate(labels) if mapping.get(n, n) in old}
    if pretrained.head == "reuse" and len(rows) < len(labels):
        missing = [n for i, n in enumerate(labels) if i not in rows]
        raise InputError(
            f"base_model.head=reuse: dataset labels {missing} match no label of {pretrained.name}'s head {old}; "
            "map them with base_model.label_mapping"
        )
    return rows
