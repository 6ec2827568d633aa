"""Where labelled sentences come from: local files (jsonl, json, parquet, CoNLL), the Hub, S3.

Each reader returns raw rows with where they came from (file, line), so validation can name the exact
place of a problem; nothing here judges the rows. `source_revision` reads a source's current revision
without loading it (the dataset watcher uses it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerflow.tasks.refs import SPLIT_ROLES
from nerflow.tasks.runtime import s3
from nerflow.tasks.runtime.errors import MAX_LISTED_PROBLEMS, DatasetValidationError, InputError
from nerflow.tasks.runtime.files import atomic_dir, hash_file, is_sealed
from nerflow.tasks.runtime.hub_access import check_available, explained
from nerflow.tasks.settings import TAG_NAME, DatasetSettings

log = logging.getLogger(__name__)

_EXTENSIONS = {
    "jsonl": (".jsonl",),
    "json": (".json",),
    "parquet": (".parquet",),
    "conll": (".conll", ".txt", ".iob", ".tsv"),
    "csv": (".csv",),
    "tsv": (".tsv",),
}  # .txt and .tsv hold either shape: file_format looks inside
_SPLIT_ALIASES = {"validation": ("dev", "valid", "val")}


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


def read_text(path: Path) -> str:
    """A file's text: UTF-8 with or without a byte-order mark (which some editors write); a file that
    is not UTF-8 fails naming the line and column of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DatasetValidationError(
            [
                f"{path}, line {line}, column {column}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the "
                "file as UTF-8"
            ]
        ) from None


def read_lines(path: Path) -> list[str]:
    # Only \n ends a line: str.splitlines would also split inside a JSON string at U+2028 and friends.
    return [line.removesuffix("\r") for line in read_text(path).split("\n")]


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetValidationError([f"{where}: not valid JSON ({e.msg} at column {e.colno})"]) from None
    except RecursionError:
        raise DatasetValidationError([f"{where}: JSON nested too deeply"]) from None


def _read_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    rows, lines = [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        if line.strip():
            rows.append(parse_json(line, f"{path}, line {lineno}"))
            lines.append(lineno)
    return rows, lines


def _read_json(path: Path) -> tuple[list[Any], None]:
    data = parse_json(read_text(path), str(path))
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise DatasetValidationError([f"{path}: expected a JSON list of rows (or {{'data': [...]}})"])
    return data, None


def _read_parquet(path: Path) -> tuple[list[Any], None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist(), None
    except (pa.ArrowException, OSError) as e:
        raise DatasetValidationError(
            [f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})"]
        ) from None


def _cell_list(cell: str, tag_ids: bool) -> Any:
    """A CSV cell holding a list: JSON (["New", "York"], [5, 6]) when it starts with '[', else
    space-separated words or tags (in the tags column, integers are tag ids; a word "2024" stays a
    word). Anything else is passed on for validation to name."""
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):  # meant as JSON (a word such as "[[Postcard" is not)
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return cell  # not a list: validation says so, naming the row and field
    return [int(v) if tag_ids and v.lstrip("-").isdigit() else v for v in text.split()]


def read_delimited(
    path: Path, delimiter: str, tokens_column: str, tags_column: str, tags_required: bool = True
) -> tuple[list[Any], list[int]]:
    """CSV or TSV with a header row; the tokens and tags columns hold lists (see _cell_list). Without
    `tags_required` (prediction input) the tags column may be absent."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, strict=True)
    rows, lines = [], []
    try:
        header = reader.fieldnames or []
        missing = [c for c in (tokens_column, tags_column) if c not in header and (tags_required or c == tokens_column)]
        if missing:
            raise DatasetValidationError([f"{path}, line 1: no column {c!r} in the header {header}" for c in missing])
        for row in reader:
            if None in row or None in row.values():
                raise DatasetValidationError(
                    [f"{path}, line {reader.line_num}: {len(header)} columns in the header, not in this row"]
                )
            parsed = {tokens_column: _cell_list(row[tokens_column], False)}
            if tags_column in row:
                parsed[tags_column] = _cell_list(row[tags_column], True)
            rows.append(parsed)
            lines.append(reader.line_num)
    except csv.Error as e:
        kind = "CSV" if delimiter == "," else "TSV"
        raise DatasetValidationError([f"{path}, line {reader.line_num}: not valid {kind} ({e})"]) from None
    return rows, lines


TAG_LIKE = re.compile(r"^(O|[BIESLU]-\S+)$")
_SNIFF_LINES = 200


def _columns(line: str) -> list[str]:
    """A word-per-line row's columns: tab-separated if it has a tab, else separated by spaces."""
    return [c.strip() for c in line.split("\t")] if "\t" in line else line.split()


def _named_columns(first: str, tokens_column: str, tags_column: str) -> tuple[int, int] | None:
    """(word column, tag column) when the first line is a header naming both columns."""
    names = _columns(first)
    if tokens_column in names and tags_column in names:
        return names.index(tokens_column), names.index(tags_column)
    return None


def looks_word_per_line(lines: list[str], tokens_column: str = "tokens", tags_column: str = "ner_tags") -> bool:
    """Word-per-line blocks (CoNLL): rows of 2+ columns whose tag column looks like a tag, a header
    naming the columns first if there is one; a table (a sentence per row) or plain text is not."""
    body = [line for line in lines[:_SNIFF_LINES] if line.strip() and not line.startswith("-DOCSTART-")]
    if not body:
        return False
    named = _named_columns(body[0], tokens_column, tags_column)
    if named:
        rows = [_columns(line) for line in body[1:]]
        # A table's cells hold whole sentences: several words, or a JSON list.
        return bool(rows) and all(
            len(r) > named[1] and " " not in r[named[0]] and not r[named[0]].startswith("[") for r in rows
        )
    tagged = sum(1 for line in body if 2 <= len(cols := _columns(line)) <= 20 and TAG_LIKE.match(cols[-1]))
    return tagged >= 0.9 * len(body)


def read_conll(path: Path, tokens_column: str, tags_column: str) -> tuple[list[Any], list[int]]:
    """Word-per-line blocks (CoNLL-2003 and its kin): a word and its columns per line, tab- or space-
    separated, the tag in the last column unless a header line names the columns, sentences separated
    by blank lines, `-DOCSTART-` lines skipped."""
    lines = read_lines(path)
    first = next((line for line in lines if line.strip()), "")
    named = _named_columns(first, tokens_column, tags_column)
    word_col, tag_col = named or (0, -1)
    rows: list[Any] = []
    starts: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    skip_header = named is not None
    for lineno, line in enumerate(lines, start=1):
        parts = _columns(line)
        if skip_header and parts:
            skip_header = False
            continue
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                rows.append({tokens_column: tokens, tags_column: tags})
            tokens, tags = [], []
            continue
        if len(parts) < 2 or (named and len(parts) <= max(word_col, tag_col)):
            raise DatasetValidationError(
                [f"{path}, line {lineno}, field {tags_column!r}: expected 'WORD ... TAG', got {line.strip()[:80]!r}"]
            )
        if not tokens:
            starts.append(lineno)
        tokens.append(parts[word_col])
        tags.append(parts[tag_col])
    if tokens:
        rows.append({tokens_column: tokens, tags_column: tags})
    return rows, starts


def file_format(
    path: Path, fmt: str, tokens_column: str = "tokens", tags_column: str = "ner_tags", text: bool = False
) -> str:
    """The format of a file by its extension and, where an extension is used for several shapes, by its
    content: `.tsv` is a table or word-per-line blocks; `.txt` is word-per-line blocks, or plain text
    (one document per line) where `text` allows it. `fmt` other than auto wins."""
    if fmt not in ("auto", "hub"):
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        blocks = looks_word_per_line(read_lines(path), tokens_column, tags_column)
        return "conll" if blocks else "tsv" if suffix == ".tsv" else "text" if text else "conll"
    for name, extensions in _EXTENSIONS.items():
        if suffix in extensions:
            return name
    raise DatasetValidationError([f"{path}: cannot tell the format from the extension {suffix!r}; set the format"])


def _find_split_file(folder: Path, split: str, role: str, fmt: str) -> tuple[Path, str]:
    formats = [fmt] if fmt not in ("auto", "hub") else list(_EXTENSIONS)
    stems = (split, *(_SPLIT_ALIASES.get(role, ()) if split == role else ()))
    found = list(
        {
            folder / f"{stem}{ext}": f
            for stem in stems
            for f in reversed(formats)  # a .tsv is both conll and tsv: one file, its shape read later
            for ext in _EXTENSIONS[f]
            if (folder / f"{stem}{ext}").is_file()
        }.items()
    )
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
        fmt = file_format(path, cfg.format, cfg.tokens_column, cfg.tags_column)
        if fmt == "jsonl":
            rows, lines = _read_jsonl(path)
        elif fmt == "json":
            rows, lines = _read_json(path)
        elif fmt == "parquet":
            rows, lines = _read_parquet(path)
        elif fmt in ("csv", "tsv"):
            rows, lines = read_delimited(path, "," if fmt == "csv" else "\t", cfg.tokens_column, cfg.tags_column)
        else:
            rows, lines = read_conll(path, cfg.tokens_column, cfg.tags_column)
        origin = f"{origin_prefix}/{path.name}" if origin_prefix else str(path)
        splits[role] = RawSplit(name=split, origin=origin, rows=rows, line_numbers=lines)
    return splits


def read_labels_file(folder: Path) -> list[str] | None:
    """Tag names in id order from folder/labels.txt, one per line (None without the file). A blank line
    between names would shift every id after it, so it is an error, like a repeated or non-IOB2 name."""
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    lines = [line.strip() for line in read_lines(path)]
    while lines and not lines[-1]:
        lines.pop()
    problems, seen = [], {}
    for lineno, name in enumerate(lines, start=1):
        if not name:
            problems.append(f"{path}, line {lineno}: empty label name (ids follow the lines: remove the blank line)")
        elif not TAG_NAME.match(name):
            problems.append(f"{path}, line {lineno}: {name[:40]!r} is not a tag (O, B-TYPE, I-TYPE, ...: no spaces)")
        elif name in seen:
            problems.append(f"{path}, line {lineno}: label {name!r} repeats line {seen[name]}")
        seen.setdefault(name, lineno)
    if not problems and "O" not in seen:
        problems.append(f"{path}: no 'O' label" if seen else f"{path}: no labels")
    if problems:
        raise DatasetValidationError(problems[:MAX_LISTED_PROBLEMS], len(problems))
    return lines


def read_hub_splits(cfg: DatasetSettings) -> tuple[dict[str, RawSplit], str]:
    """Load a Hub dataset with `datasets` and return raw rows plus the exact revision that was read."""
    import datasets

    with explained(f"dataset.source {cfg.source!r}"):
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
    try:
        bucket, prefix = s3.parse_s3_uri(uri)
    except ValueError as e:
        raise DatasetValidationError([str(e)]) from None
    client = s3.client()  # endpoint from AWS_ENDPOINT_URL, credentials from the AWS chain
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
            if rel in (".", ".."):
                raise DatasetValidationError(
                    [f"s3://{bucket}/{obj['Key']}: an object named {rel!r} would be saved outside the cache"]
                )
            if rel and "/" not in rel:
                objects.append((obj["Key"], rel, obj["ETag"]))
    if not objects:
        raise DatasetValidationError([f"{uri}: no objects under this prefix"])
    revision = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()[:16]
    return client, bucket, objects, f"s3-etags:{revision}"


def download_s3_prefix(uri: str, dest_root: Path) -> tuple[Path, str]:
    """Download the files under s3://bucket/prefix once per revision; returns (folder, revision)."""
    client, bucket, objects, revision = list_s3_prefix(uri)
    dest = dest_root / "s3" / bucket / (s3.parse_s3_uri(uri)[1] or "_") / revision.split(":")[-1]
    if not is_sealed(dest):
        with atomic_dir(dest) as tmp:
            for key, rel, _ in objects:
                client.download_file(bucket, key, str(tmp / rel))
    return dest, revision


def local_files_revision(folder: Path) -> str:
    """Content hash of the files directly in a dataset folder (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(path.name.encode() + b"\0")
        hash_file(h, path)
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


def read_source(cfg: DatasetSettings, cache_dir: Path) -> tuple[dict[str, RawSplit], Path | None, str | None]:
    """Raw splits, the local folder they came from (if any) and the source's own revision (if any)."""
    if cfg.source.startswith("s3://"):
        folder, revision = download_s3_prefix(cfg.source, cache_dir)
        return read_local_splits(folder, cfg, origin_prefix=cfg.source.rstrip("/")), folder, revision
    if is_local_source(cfg):
        local = Path(cfg.source).expanduser()
        return read_local_splits(local, cfg), local, None
    splits, revision = read_hub_splits(cfg)
    return splits, None, revision


def looks_like_path(source: str) -> bool:
    """A value a user means as a folder: ./x, ../x, /x, ~/x, or deeper than a Hub id's owner/name."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def check_source(cfg: DatasetSettings) -> None:
    """DatasetValidationError within seconds if the dataset cannot be had: a folder that is not there,
    a Hub id that is missing, gated, or not cached while offline. s3:// is checked when read."""
    if cfg.source.startswith("s3://"):
        return
    local = Path(cfg.source).expanduser()
    if local.is_dir():
        return
    if is_local_source(cfg) or looks_like_path(cfg.source):
        where = (
            ""
            if local.is_absolute()
            else f" (from {Path.cwd()}; a relative path in a config file is read from the file's folder)"
        )
        raise DatasetValidationError([f"dataset.source {cfg.source!r}: no such folder{where}"])
    try:
        check_available(cfg.source, "dataset", cfg.revision, f"dataset.source {cfg.source!r}")
    except (
        InputError
    ) as e:  # nerflow.tasks.runtime.hub_access's, as a validation error like every other dataset problem
        raise DatasetValidationError([str(e)]) from None


def is_local_source(cfg: DatasetSettings) -> bool:
    """A folder on this machine (not s3://, not a Hub id): it exists, looks like a path, or a file
    format was named."""
    if cfg.source.startswith("s3://") or cfg.format == "hub":
        return False
    return Path(cfg.source).expanduser().exists() or cfg.format != "auto" or cfg.source.startswith((".", "/", "~"))
