"""tokenize: words to subwords, with word labels aligned through `word_ids()` (nerflow.tasks.data.alignment).

The tokenized dataset is cached on disk under a key made of the dataset fingerprint, the tokenizer's
fingerprint (a hash of its files or its content), the alignment strategy and the max length; training
hyperparameters are not part of it, so changing them never re-tokenizes. The Prefect task uses the
same key as its cache key, so an unchanged re-run shows the task as `Cached`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from nerflow.tasks.data.alignment import align_labels, b_to_i_map
from nerflow.tasks.refs import SPLIT_ROLES, DatasetRef, RunContext, TokenizedRef
from nerflow.tasks.runtime.caching import JSON_RESULTS, CachedStep
from nerflow.tasks.runtime.files import atomic_dir, atomic_write_json, is_sealed
from nerflow.tasks.runtime.retry import TASK_RETRIES, network_retry_condition
from nerflow.tasks.settings import AlignmentStrategy, BaseModelSettings, TokenizeSettings
from nerflow.tasks.training.pretrained import load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)

_CACHE_VERSION = "nerflow-tokenized-v3"
# Above these shares of distinct words, the tokenizer is losing information the tags depend on.
NORMALIZER_WARN_SHARE = 0.01
UNK_WARN_SHARE = 0.005


def tokenization_key(dataset_fingerprint: str, tok_fingerprint: str, settings: TokenizeSettings) -> str:
    parts = [_CACHE_VERSION, dataset_fingerprint, tok_fingerprint, settings.alignment, str(settings.max_length)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def encode_batch(
    tokenizer,
    tokens: list[list[str]],
    tags: list[list[int]],
    strategy: AlignmentStrategy,
    b_to_i: Mapping[int, int],
    max_length: int,
) -> dict[str, list]:
    """Tokenize pre-split sentences and align labels; also count what tokenization loses."""
    # No token_type_ids: one sentence per input, so they would all be 0, which is what BERT-family
    # models assume when they are absent; a third of the Rust-to-Python conversion and storage saved.
    enc = tokenizer(
        tokens, is_split_into_words=True, truncation=True, max_length=max_length, return_token_type_ids=False
    )
    unk = tokenizer.unk_token_id
    out: dict[str, list] = dict(enc.items())
    out.update(labels=[], word_ids=[], word_labels=[], truncated=[], no_subword=[], unk_words=[])
    for i, word_tags in enumerate(tags):
        wids = enc.word_ids(i)
        ids = out["input_ids"][i]
        present = set(wids)
        present.discard(None)
        last = next((w for w in reversed(wids) if w is not None), -1)  # word ids never decrease
        # A full-length encoding that stops before the last word was cut by max_length; any other
        # missing word had no subword at all.
        truncated = last < len(word_tags) - 1 and len(wids) >= max_length
        out["labels"].append(align_labels(wids, word_tags, strategy, b_to_i))
        out["word_ids"].append(wids)  # None at special tokens; stored as nulls
        out["word_labels"].append(word_tags)
        out["truncated"].append(truncated)
        out["no_subword"].append((last + 1 if truncated else len(word_tags)) - len(present))
        out["unk_words"].append(len({w for w, t in zip(wids, ids) if t == unk and w is not None}) if unk in ids else 0)
    return out


# ----------------------------------------------------------------------------------------- round-trip


def roundtrip_report(tokenizer, words: set[str]) -> dict[str, Any]:
    """How many distinct words the tokenizer's normalizer changes (lower-casing, accent stripping)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    changed = []
    if normalizer is not None:
        for w in sorted(words):
            # Ignore added spaces (CJK characters are split off): only changed characters count.
            if normalizer.normalize_str(w).replace(" ", "") != w:
                changed.append(w)
    examples = [f"{w!r} -> {normalizer.normalize_str(w)!r}" for w in changed[:5]]
    return {"distinct_words": len(words), "changed_by_normalizer": len(changed), "examples": examples}


def tokenization_warnings(stats: dict[str, dict[str, int]], roundtrip: dict[str, Any], checkpoint: str) -> list[str]:
    warnings = []
    for role, s in stats.items():
        if s["truncated"]:
            warnings.append(
                f"{role}: {s['truncated']} of {s['sentences']} sentences lost words to max_length truncation "
                "(those words are scored as predicted O)"
            )
        if s["words_without_subword"]:
            warnings.append(
                f"{role}: {s['words_without_subword']} word(s) yield no subword at all (e.g. zero-width "
                "characters); they are skipped without shifting other labels and scored as predicted O"
            )
    words = roundtrip["distinct_words"] or 1
    if roundtrip["changed_by_normalizer"] / words > NORMALIZER_WARN_SHARE:
        warnings.append(
            f"tokenizer of {checkpoint} cannot round-trip the dataset's words: its normalizer changes "
            f"{roundtrip['changed_by_normalizer']} of {roundtrip['distinct_words']} distinct words "
            f"({', '.join(roundtrip['examples'][:3])}); an uncased or accent-stripping tokenizer discards "
            "characters (for Bengali: vowel signs) the model needs - prefer a cased checkpoint"
        )
    unk_total = sum(s["unk_words"] for s in stats.values())
    word_total = sum(s["words"] for s in stats.values()) or 1
    if unk_total / word_total > UNK_WARN_SHARE:
        warnings.append(f"{unk_total} of {word_total} words contain an unknown ([UNK]) subword")
    return warnings


# ------------------------------------------------------------------------------------------- the step


def tokenize_dataset(
    dataset: DatasetRef, pretrained: BaseModelSettings, settings: TokenizeSettings, cache_dir: Path
) -> TokenizedRef:
    """Tokenize and align every split, or reuse the cached result for the same key."""
    tok_fp = tokenizer_fingerprint(pretrained)  # a local folder's files: no tokenizer load to find the cache
    key = tokenization_key(dataset.fingerprint, tok_fp, settings)
    path = Path(cache_dir) / "tokenized" / key
    if not is_sealed(path):
        _build(dataset, pretrained, settings, load_tokenizer(pretrained), tok_fp, key, path)
    else:
        log.info("tokenized dataset %s already on disk, reusing it", key)
    return TokenizedRef.model_validate_json((path / "ref.json").read_text(encoding="utf-8"))


def _build(dataset, pretrained, settings, tokenizer, tok_fp, key, path: Path) -> None:
    dd = dataset.load()
    b_to_i = b_to_i_map(dataset.label_names)
    stats_columns = ["truncated", "no_subword", "unk_words"]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return encode_batch(
            tokenizer, list(batch["tokens"]), list(batch["ner_tags"]), settings.alignment, b_to_i, settings.max_length
        )

    stats: dict[str, dict[str, int]] = {}
    words: set[str] = set()
    encoded = {}
    for role in SPLIT_ROLES:
        split = dd[role]
        words.update(w for sentence in split["tokens"] for w in sentence)
        out = split.map(encode, batched=True, batch_size=1000, remove_columns=split.column_names, keep_in_memory=True)
        stats[role] = {
            "sentences": len(out),
            "words": int(sum(len(t) for t in out["word_labels"])),
            "subwords": int(sum(len(ids) for ids in out["input_ids"])),
            "truncated": int(sum(out["truncated"])),
            "words_without_subword": int(sum(out["no_subword"])),
            "unk_words": int(sum(out["unk_words"])),
        }
        encoded[role] = out.remove_columns(stats_columns)
    roundtrip = roundtrip_report(tokenizer, words)
    ref = TokenizedRef(
        path=str(path),
        cache_key=key,
        dataset_fingerprint=dataset.fingerprint,
        base_model=pretrained.name,
        tokenizer_fingerprint=tok_fp,
        alignment=settings.alignment,
        max_length=settings.max_length,
        label_names=dataset.label_names,
        tag_scheme=dataset.tag_scheme,
        stats=stats,
        roundtrip=roundtrip,
        warnings=tokenization_warnings(stats, roundtrip, pretrained.name),
    )
    import datasets

    with atomic_dir(path) as tmp:
        datasets.DatasetDict(encoded).save_to_disk(str(tmp / "data"))
        atomic_write_json(tmp / "ref.json", ref.model_dump(mode="json"))


def tokenize(
    dataset: DatasetRef, base_model: BaseModelSettings, cfg: TokenizeSettings, ctx: RunContext
) -> TokenizedRef:
    """The dataset as the base model's subwords with aligned labels, cached under the run's cache folder."""
    return tokenize_dataset(dataset, base_model, cfg, Path(ctx.cache_dir))


def tokenized_exists(ref: TokenizedRef) -> bool:
    return is_sealed(Path(ref.path))


def _cache_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    # The same key the plain function uses, plus the cache folder: another output root is another cache.
    dataset: DatasetRef = inputs["dataset"]
    key = tokenization_key(dataset.fingerprint, tokenizer_fingerprint(inputs["base_model"]), inputs["cfg"])
    folder = str(Path(inputs["ctx"].cache_dir).resolve())
    return f"tokenize-{key}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"


@task(
    name="tokenize",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=_cache_key),
    **JSON_RESULTS,
    retry_condition_fn=network_retry_condition,  # the tokenizer may come from the Hub
    **TASK_RETRIES,
)
def tokenize_task(
    dataset: DatasetRef, base_model: BaseModelSettings, cfg: TokenizeSettings, ctx: RunContext
) -> TokenizedRef:
    ref = tokenize(dataset, base_model, cfg, ctx)
    logger = get_run_logger()
    logger.info(
        "tokenized with %s (alignment=%s, max_length=%d): %s",
        ref.base_model,
        ref.alignment,
        ref.max_length,
        {role: s["subwords"] for role, s in ref.stats.items()},
    )
    for warning in ref.warnings:
        logger.warning(warning)
    return ref


TOKENIZE = CachedStep(tokenize_task, tokenized_exists)
