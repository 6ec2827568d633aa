"""Step 1, ingest: load the labelled sentences, validate every split, fingerprint and profile them.

The plain function `ingest_dataset` does the work and is what tests call; `ingest` is the Prefect task.
Whatever the source (Hub, local files, S3), the result is the same normalised dataset saved on disk
(columns `tokens` and `ner_tags`, splits `train`/`validation`/`test`) and a small `DatasetRef` that
points to it. Bad rows stop the run here, before any training, with the file, split, row and field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from tasks.settings import DatasetSettings
from tasks.refs import DatasetRef
from tasks.retry import network_retry_condition
from tasks.storage import atomic_dir

log = logging.getLogger(__name__)

SPLIT_ROLES = ("train", "validation", "test")
_EXTENSIONS = {"jsonl": (".jsonl",), "json": (".json",), "parquet": (".parquet",), "conll": (".conll", ".txt", ".iob")}
_SPLIT_ALIASES = {"validation": ("dev", "valid", "val")}
MAX_LISTED_PROBLEMS = 20
_FINGERPRINT_VERSION = "nerflow-dataset-v1"


class DatasetValidationError(ValueError):
    """The dataset cannot be trained on; the message lists each problem with file, split, row, field."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        total = total if total is not None else len(problems)
        shown = "\n".join(f"  - {p}" for p in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"dataset validation failed ({total} problem(s)):\n{shown}{more}")


@dataclass
class RawSplit:
    """One split as read from its source, before validation."""

    name: str
    origin: str  # file path, s3 URI or hub id, for error messages
    rows: list[Any]
    line_numbers: list[int] | None = None  # file line of each row, where the format has lines
    features_label_names: list[str] | None = None

    def where(self, i: int) -> str:
        line = f" (line {self.line_numbers[i]})" if self.line_numbers else ""
        return f"{self.origin}, split {self.name!r}, row {i}{line}"


@dataclass
class CleanSplit:
    tokens: list[list[str]]
    tags: list[list[int]]
    iob_violations: int = 0
    iob_examples: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- readers


def _read_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    rows, lines = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetValidationError([f"{path}, line {lineno}: not valid JSON ({e.msg})"]) from e
            lines.append(lineno)
    return rows, lines


def _read_json(path: Path) -> tuple[list[Any], None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetValidationError([f"{path}: not valid JSON ({e.msg} at line {e.lineno})"]) from e
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise DatasetValidationError([f"{path}: expected a JSON list of rows (or {{'data': [...]}})"])
    return data, None


def _read_parquet(path: Path) -> tuple[list[Any], None]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist(), None


def _read_conll(path: Path, tokens_column: str, tags_column: str) -> tuple[list[Any], list[int]]:
    """CoNLL: one word per line, its tag in the last column, sentences separated by blank lines."""
    rows: list[Any] = []
    lines: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    rows.append({tokens_column: tokens, tags_column: tags})
                    lines.append(start)
                tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise DatasetValidationError(
                    [f"{path}, line {lineno}, field {tags_column!r}: expected 'WORD ... TAG', got {line.strip()!r}"]
                )
            if not tokens:
                start = lineno
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        rows.append({tokens_column: tokens, tags_column: tags})
        lines.append(start)
    return rows, lines


def _find_split_file(folder: Path, split: str, role: str, fmt: str) -> tuple[Path, str]:
    formats = [fmt] if fmt not in ("auto", "hub") else list(_EXTENSIONS)
    stems = (split, *(_SPLIT_ALIASES.get(role, ()) if split == role else ()))
    found = [
        (folder / f"{stem}{ext}", f)
        for stem in stems
        for f in formats
        for ext in _EXTENSIONS[f]
        if (folder / f"{stem}{ext}").is_file()
    ]
    if not found:
        looked = ", ".join(f"{s}{e}" for s in stems for f in formats for e in _EXTENSIONS[f])
        raise DatasetValidationError([f"{folder}: no file for split {split!r} (looked for {looked})"])
    if len(found) > 1:
        names = ", ".join(p.name for p, _ in found)
        raise DatasetValidationError([f"{folder}: several files for split {split!r}: {names}; keep one"])
    return found[0]


def read_local_splits(folder: Path, cfg: DatasetSettings, origin_prefix: str | None = None) -> dict[str, RawSplit]:
    """Read train/validation/test files from a folder into raw rows, keeping line numbers for errors."""
    if not folder.is_dir():
        raise DatasetValidationError([f"{folder}: dataset folder does not exist"])
    splits = {}
    for role, split in zip(SPLIT_ROLES, (cfg.train_split, cfg.validation_split, cfg.test_split)):
        path, fmt = _find_split_file(folder, split, role, cfg.format)
        if fmt == "jsonl":
            rows, lines = _read_jsonl(path)
        elif fmt == "json":
            rows, lines = _read_json(path)
        elif fmt == "parquet":
            rows, lines = _read_parquet(path)
        else:
            rows, lines = _read_conll(path, cfg.tokens_column, cfg.tags_column)
        origin = f"{origin_prefix}/{path.name}" if origin_prefix else str(path)
        splits[role] = RawSplit(name=split, origin=origin, rows=rows, line_numbers=lines)
    return splits


def read_labels_file(folder: Path) -> list[str] | None:
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_hub_splits(cfg: DatasetSettings) -> tuple[dict[str, RawSplit], str]:
    """Load a Hub dataset with `datasets` and return raw rows plus the exact revision that was read."""
    import datasets

    dd = datasets.load_dataset(cfg.source, cfg.config, revision=cfg.revision)
    splits = {}
    for role, split in zip(SPLIT_ROLES, (cfg.train_split, cfg.validation_split, cfg.test_split)):
        if split not in dd:
            raise DatasetValidationError(
                [f"{cfg.source} ({cfg.config}): no split {split!r}; it has {sorted(dd.keys())}"]
            )
        ds = dd[split]
        missing = [c for c in (cfg.tokens_column, cfg.tags_column) if c not in ds.column_names]
        if missing:
            raise DatasetValidationError(
                [f"{cfg.source}, split {split!r}: missing column(s) {missing}; it has {ds.column_names}"]
            )
        tag_feature = getattr(ds.features[cfg.tags_column], "feature", None)
        # Columns are lazy in datasets 5: materialise them as plain lists once.
        tokens, tags = list(ds[cfg.tokens_column]), list(ds[cfg.tags_column])
        rows = [{cfg.tokens_column: t, cfg.tags_column: g} for t, g in zip(tokens, tags)]
        splits[role] = RawSplit(
            name=split,
            origin=f"{cfg.source}" + (f" ({cfg.config})" if cfg.config else ""),
            rows=rows,
            features_label_names=list(getattr(tag_feature, "names", None) or []) or None,
        )
    return splits, _hub_dataset_revision(cfg)


def _hub_dataset_revision(cfg: DatasetSettings) -> str:
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(cfg.source, revision=cfg.revision).sha
        if sha:
            return sha
    except Exception as e:  # offline, or a mirror without the info endpoint
        log.warning("could not resolve the Hub revision of %s: %s", cfg.source, e)
    return cfg.revision or "unresolved"


def list_s3_prefix(uri: str) -> tuple[Any, str, list[tuple[str, str, str]], str]:
    """(client, bucket, [(key, name, etag)], revision) of the files directly under s3://bucket/prefix.

    The revision is a hash of the keys and ETags: it changes exactly when an object changes.
    """
    import boto3

    m = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not m:
        raise DatasetValidationError([f"{uri}: not an s3://bucket/prefix URI"])
    bucket, prefix = m.group(1), m.group(2).strip("/")
    client = boto3.client("s3")  # endpoint from AWS_ENDPOINT_URL, credentials from the AWS chain
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
            if rel and "/" not in rel:
                objects.append((obj["Key"], rel, obj["ETag"]))
    if not objects:
        raise DatasetValidationError([f"{uri}: no objects under this prefix"])
    revision = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()[:16]
    return client, bucket, objects, f"s3-etags:{revision}"


def download_s3_prefix(uri: str, dest_root: Path) -> tuple[Path, str]:
    """Download the files under s3://bucket/prefix once per revision; returns (folder, revision)."""
    client, bucket, objects, revision = list_s3_prefix(uri)
    m = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    dest = dest_root / "s3" / bucket / (m.group(2).strip("/") or "_") / revision.split(":")[-1]
    if not dest.exists():
        with atomic_dir(dest) as tmp:
            for key, rel, _ in objects:
                client.download_file(bucket, key, str(tmp / rel))
    return dest, revision


def local_files_revision(folder: Path) -> str:
    """Content hash of the files directly in a dataset folder (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"


def source_revision(cfg: DatasetSettings) -> str:
    """The dataset's current revision without loading it: Hub sha, S3 ETags hash or file content hash."""
    if cfg.source.startswith("s3://"):
        return list_s3_prefix(cfg.source)[3]
    local = Path(cfg.source).expanduser()
    if cfg.format != "hub" and local.is_dir():
        return local_files_revision(local)
    from huggingface_hub import HfApi

    sha = HfApi().dataset_info(cfg.source, revision=cfg.revision).sha
    if not sha:
        raise RuntimeError(f"{cfg.source}: the Hub returned no revision")
    return sha


# -------------------------------------------------------------------------------------------- validation


def resolve_label_names(cfg: DatasetSettings, splits: dict[str, RawSplit], folder: Path | None) -> list[str]:
    if cfg.label_names:
        return list(cfg.label_names)
    for raw in splits.values():
        if raw.features_label_names:
            return raw.features_label_names
    if folder is not None and (names := read_labels_file(folder)):
        return DatasetSettings(label_names=names).label_names  # validates the IOB shape
    string_tags = {
        tag
        for raw in splits.values()
        for row in raw.rows
        if isinstance(row, dict) and isinstance(row.get(cfg.tags_column), list)
        for tag in row[cfg.tags_column]
    }
    if string_tags and all(isinstance(t, str) for t in string_tags):
        return derive_label_names(string_tags)
    raise DatasetValidationError(
        [
            f"{next(iter(splits.values())).origin}, field {cfg.tags_column!r}: tags are ids but no label "
            "names are known; set dataset.label_names or add a labels.txt beside the files"
        ]
    )


def derive_label_names(tags: Iterable[str]) -> list[str]:
    """O first, then B-/I- per entity type in alphabetical order (I- added where only B- was seen)."""
    types = sorted({t[2:] for t in tags if t != "O" and len(t) > 2})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _iob_violation(prev: str, cur: str) -> bool:
    """An I-X tag must follow B-X or I-X (IOB2); anything else is a span that starts with I-."""
    return cur.startswith("I-") and not (prev[2:] == cur[2:] and prev[:2] in ("B-", "I-"))


def validate_split(raw: RawSplit, cfg: DatasetSettings, label_names: Sequence[str]) -> tuple[CleanSplit, list[str], int]:
    """Check every row; return the clean split, the first problems and the total number of problems."""
    problems: list[str] = []
    total = 0

    def problem(msg: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < MAX_LISTED_PROBLEMS:
            problems.append(msg)

    if not raw.rows:
        problem(f"{raw.origin}, split {raw.name!r}: split is empty")
        return CleanSplit([], []), problems, total

    index = {name: i for i, name in enumerate(label_names)}
    clean = CleanSplit([], [])
    tok_col, tag_col = cfg.tokens_column, cfg.tags_column
    for i, row in enumerate(raw.rows):
        where = raw.where(i)
        if not isinstance(row, dict):
            problem(f"{where}: expected an object with fields {tok_col!r} and {tag_col!r}")
            continue
        missing = [c for c in (tok_col, tag_col) if c not in row]
        if missing:
            for c in missing:
                problem(f"{where}, field {c!r}: missing")
            continue
        tokens, tags = row[tok_col], row[tag_col]
        if not isinstance(tokens, list):
            problem(f"{where}, field {tok_col!r}: expected a list of words, got {type(tokens).__name__}")
            continue
        if not isinstance(tags, list):
            problem(f"{where}, field {tag_col!r}: expected a list of tags, got {type(tags).__name__}")
            continue
        if not tokens:
            problem(f"{where}, field {tok_col!r}: sentence has no words")
            continue
        if len(tokens) != len(tags):
            problem(f"{where}, field {tag_col!r}: {len(tags)} tags for {len(tokens)} words")
            continue
        row_ok = True
        for j, tok in enumerate(tokens):
            if not isinstance(tok, str):
                problem(f"{where}, field {tok_col!r}[{j}]: word is {type(tok).__name__}, not a string")
                row_ok = False
            elif not tok.strip():
                problem(f"{where}, field {tok_col!r}[{j}]: empty word {tok!r}")
                row_ok = False
        ids = []
        for j, tag in enumerate(tags):
            if isinstance(tag, bool) or not isinstance(tag, (int, str)):
                problem(f"{where}, field {tag_col!r}[{j}]: tag {tag!r} is neither an id nor a name")
                row_ok = False
            elif isinstance(tag, int) and not 0 <= tag < len(label_names):
                problem(f"{where}, field {tag_col!r}[{j}]: unknown tag id {tag} (labels 0..{len(label_names) - 1})")
                row_ok = False
            elif isinstance(tag, str) and tag not in index:
                problem(f"{where}, field {tag_col!r}[{j}]: unknown tag {tag!r} (labels {list(label_names)})")
                row_ok = False
            else:
                ids.append(tag if isinstance(tag, int) else index[tag])
        if not row_ok:
            continue
        names = [label_names[t] for t in ids]
        bad = [j for j, cur in enumerate(names) if _iob_violation(names[j - 1] if j else "O", cur)]
        if bad:
            clean.iob_violations += len(bad)
            if len(clean.iob_examples) < 5:
                clean.iob_examples.append(f"{where}: {names[bad[0]]} after {names[bad[0] - 1] if bad[0] else 'start'}")
        clean.tokens.append(tokens)
        clean.tags.append(ids)
    return clean, problems, total


# ------------------------------------------------------------------------------------------- fingerprint


def dataset_fingerprint(label_names: Sequence[str], splits: dict[str, CleanSplit]) -> str:
    """A content hash of exactly what is trained on: labels, and every split's words and tags in order."""
    h = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    h.update(json.dumps(list(label_names)).encode())
    for role in SPLIT_ROLES:
        h.update(f"\x00split:{role}\x00".encode())
        for tokens, tags in zip(splits[role].tokens, splits[role].tags):
            h.update(json.dumps([tokens, tags], ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- profile


def entity_types(tags: Sequence[str]) -> list[str]:
    """Types of the entity spans in one IOB2 sentence (an I- after a different tag opens a span too)."""
    spans, prev = [], "O"
    for cur in tags:
        if cur.startswith("B-") or _iob_violation(prev, cur):
            spans.append(cur[2:])
        prev = cur
    return spans


def profile_splits(label_names: Sequence[str], splits: dict[str, CleanSplit]) -> pd.DataFrame:
    """Per split: sentences, words, entities per type, sentence-length quantiles, IOB2 violations."""
    types = sorted({n[2:] for n in label_names if n != "O"})
    records = []
    for role in SPLIT_ROLES:
        s = splits[role]
        lengths = pd.Series([len(t) for t in s.tokens], dtype="int64")
        counts: Counter[str] = Counter()
        for tags in s.tags:
            counts.update(entity_types([label_names[t] for t in tags]))
        rec: dict[str, Any] = {"split": role, "sentences": len(s.tokens), "words": int(lengths.sum())}
        rec.update({f"entities_{t}": int(counts.get(t, 0)) for t in types})
        for q in (0.5, 0.9, 0.99):
            rec[f"len_p{int(q * 100)}"] = float(lengths.quantile(q)) if len(lengths) else 0.0
        rec["len_max"] = int(lengths.max()) if len(lengths) else 0
        rec["iob_violations"] = s.iob_violations
        records.append(rec)
    return pd.DataFrame.from_records(records)


# ------------------------------------------------------------------------------------------- the step


def read_source(cfg: DatasetSettings, cache_dir: Path) -> tuple[dict[str, RawSplit], Path | None, str | None]:
    """Raw splits, the local folder they came from (if any) and the source's own revision (if any)."""
    if cfg.source.startswith("s3://"):
        folder, revision = download_s3_prefix(cfg.source, cache_dir)
        return read_local_splits(folder, cfg, origin_prefix=cfg.source.rstrip("/")), folder, revision
    local = Path(cfg.source).expanduser()
    if cfg.format != "hub" and (local.exists() or cfg.format != "auto" or cfg.source.startswith((".", "/", "~"))):
        return read_local_splits(local, cfg), local, None
    splits, revision = read_hub_splits(cfg)
    return splits, None, revision


def ingest_dataset(cfg: DatasetSettings, cache_dir: Path) -> DatasetRef:
    """Load, validate, normalise, fingerprint and profile the dataset; save it under cache_dir."""
    import datasets

    raw, folder, source_revision = read_source(cfg, Path(cache_dir))
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    for role, limit in limits.items():
        if limit is not None:
            raw[role].rows = raw[role].rows[:limit]
            if raw[role].line_numbers:
                raw[role].line_numbers = raw[role].line_numbers[:limit]

    label_names = resolve_label_names(cfg, raw, folder)
    clean: dict[str, CleanSplit] = {}
    problems: list[str] = []
    total = 0
    for role in SPLIT_ROLES:
        clean[role], split_problems, split_total = validate_split(raw[role], cfg, label_names)
        problems.extend(split_problems[: MAX_LISTED_PROBLEMS - len(problems)])
        total += split_total
    if total:
        raise DatasetValidationError(problems, total)
    for role in SPLIT_ROLES:
        if clean[role].iob_violations:
            log.warning(
                "split %r: %d I- tag(s) do not continue a span of their type (kept; counted as span starts), e.g. %s",
                role,
                clean[role].iob_violations,
                "; ".join(clean[role].iob_examples),
            )

    fingerprint = dataset_fingerprint(label_names, clean)
    path = Path(cache_dir) / "datasets" / fingerprint[:20]
    if not path.exists():
        features = datasets.Features(
            {
                "tokens": datasets.List(datasets.Value("string")),
                "ner_tags": datasets.List(datasets.ClassLabel(names=list(label_names))),
            }
        )
        dd = datasets.DatasetDict(
            {
                role: datasets.Dataset.from_dict({"tokens": s.tokens, "ner_tags": s.tags}, features=features)
                for role, s in clean.items()
            }
        )
        with atomic_dir(path) as tmp:
            dd.save_to_disk(str(tmp))

    profile = profile_splits(label_names, clean)
    return DatasetRef(
        path=str(path),
        fingerprint=fingerprint,
        source=cfg.source,
        config=cfg.config if folder is None else None,
        revision=source_revision or f"sha256:{fingerprint[:16]}",
        label_names=list(label_names),
        num_rows={role: len(s.tokens) for role, s in clean.items()},
        iob_violations={role: s.iob_violations for role, s in clean.items()},
        language=cfg.resolved_language(),
        profile=profile.to_dict(orient="records"),
        split_names={"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split},
    )


def load_dataset_dict(ref: DatasetRef):
    import datasets

    return datasets.load_from_disk(ref.path)


@task(
    name="ingest",
    cache_policy=NO_CACHE,  # the source may have changed; re-reading it is the point
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_jitter_factor=0.5,
    retry_condition_fn=network_retry_condition,
)
def ingest_task(cfg: DatasetSettings, cache_dir: str) -> DatasetRef:
    """Load and validate the dataset (retried on network errors only) and publish its profile."""
    ref = ingest_dataset(cfg, Path(cache_dir))
    get_run_logger().info(
        "dataset %s revision %s fingerprint %s: %s sentences, labels %s",
        ref.source,
        ref.revision,
        ref.fingerprint[:12],
        ref.num_rows,
        ref.label_names,
    )
    create_table_artifact(
        key="dataset-profile",
        table=ref.profile,
        description=f"Dataset profile of {ref.source} (revision {ref.revision}, fingerprint {ref.fingerprint[:12]})",
    )
    return ref
