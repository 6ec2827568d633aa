"""Checking every row of every split, and what is computed from the clean rows: label names,
the content fingerprint and the profile. A problem names its file, split, row, line and field."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import MAX_LISTED_PROBLEMS, DatasetValidationError
from tasks.refs import SPLIT_ROLES
from tasks.settings import DatasetSettings
from tasks.sources import RawSplit, read_labels_file

_FINGERPRINT_VERSION = "nerflow-dataset-v1"


@dataclass
class CleanSplit:
    tokens: list[list[str]]
    tags: list[list[int]]
    iob_violations: int = 0
    iob_examples: list[str] = field(default_factory=list)


def resolve_label_names(cfg: DatasetSettings, splits: dict[str, RawSplit], folder: Path | None) -> list[str]:
    if cfg.label_names:
        return list(cfg.label_names)
    for raw in splits.values():
        if raw.features_label_names:
            return raw.features_label_names
    if folder is not None and (names := read_labels_file(folder)):
        return names  # checked by read_labels_file
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


class _Problems:
    """The first MAX_LISTED_PROBLEMS problems, and how many there were in all."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(message)


def _shape_problems(row: Any, where: str, tok_col: str, tag_col: str) -> list[str]:
    """The first thing wrong with a row's structure (not a mapping, a field missing or of the wrong kind)."""
    if not isinstance(row, dict):
        return [f"{where}: expected an object with fields {tok_col!r} and {tag_col!r}"]
    missing = [f"{where}, field {c!r}: missing" for c in (tok_col, tag_col) if c not in row]
    if missing:
        return missing
    tokens, tags = row[tok_col], row[tag_col]
    if not isinstance(tokens, list):
        return [f"{where}, field {tok_col!r}: expected a list of words, got {type(tokens).__name__}"]
    if not isinstance(tags, list):
        return [f"{where}, field {tag_col!r}: expected a list of tags, got {type(tags).__name__}"]
    if not tokens:
        return [f"{where}, field {tok_col!r}: sentence has no words"]
    if len(tokens) != len(tags):
        return [f"{where}, field {tag_col!r}: {len(tags)} tags for {len(tokens)} words"]
    return []


def _word_problems(tokens: list[Any], where: str, tok_col: str) -> list[str]:
    problems = []
    for j, word in enumerate(tokens):
        if not isinstance(word, str):
            problems.append(f"{where}, field {tok_col!r}[{j}]: word is {type(word).__name__}, not a string")
        elif not word.strip():
            problems.append(f"{where}, field {tok_col!r}[{j}]: empty word {word!r}")
    return problems


def _tag_ids(tags: list[Any], where: str, tag_col: str, label_names: Sequence[str], index: dict[str, int]) -> tuple[list[int], list[str]]:
    """Tag ids of a row (ids or names accepted), and the problems with the tags that are neither."""
    ids, problems = [], []
    for j, tag in enumerate(tags):
        if isinstance(tag, bool) or not isinstance(tag, (int, str)):
            problems.append(f"{where}, field {tag_col!r}[{j}]: tag {tag!r} is neither an id nor a name")
        elif isinstance(tag, int) and not 0 <= tag < len(label_names):
            problems.append(f"{where}, field {tag_col!r}[{j}]: unknown tag id {tag} (labels 0..{len(label_names) - 1})")
        elif isinstance(tag, str) and tag not in index:
            problems.append(f"{where}, field {tag_col!r}[{j}]: unknown tag {tag!r} (labels {list(label_names)})")
        else:
            ids.append(tag if isinstance(tag, int) else index[tag])
    return ids, problems


def _accept(clean: CleanSplit, tokens: list[str], ids: list[int], label_names: Sequence[str], where: str) -> None:
    """Keep a valid row; count I- tags that do not continue a span of their type (kept, not fatal)."""
    names = [label_names[t] for t in ids]
    bad = [j for j, cur in enumerate(names) if _iob_violation(names[j - 1] if j else "O", cur)]
    if bad:
        clean.iob_violations += len(bad)
        if len(clean.iob_examples) < 5:
            clean.iob_examples.append(f"{where}: {names[bad[0]]} after {names[bad[0] - 1] if bad[0] else 'start'}")
    clean.tokens.append(tokens)
    clean.tags.append(ids)


def validate_split(raw: RawSplit, cfg: DatasetSettings, label_names: Sequence[str]) -> tuple[CleanSplit, list[str], int]:
    """Check every row; return the clean split, the first problems and the total number of problems."""
    problems = _Problems()
    clean = CleanSplit([], [])
    if not raw.rows:
        problems.add(f"{raw.origin}, split {raw.name!r}: split is empty")
    index = {name: i for i, name in enumerate(label_names)}
    tok_col, tag_col = cfg.tokens_column, cfg.tags_column
    for i, row in enumerate(raw.rows):
        where = raw.where(i)
        found = _shape_problems(row, where, tok_col, tag_col)
        if not found:
            ids, tag_problems = _tag_ids(row[tag_col], where, tag_col, label_names, index)
            found = _word_problems(row[tok_col], where, tok_col) + tag_problems
        for message in found:
            problems.add(message)
        if not found:
            _accept(clean, row[tok_col], ids, label_names, where)
    return clean, problems.listed, problems.total


def validate_splits(raw: dict[str, RawSplit], cfg: DatasetSettings, label_names: Sequence[str]) -> dict[str, CleanSplit]:
    """Every split checked; one DatasetValidationError listing the first problems of all splits."""
    clean: dict[str, CleanSplit] = {}
    listed: list[str] = []
    total = 0
    for role in SPLIT_ROLES:
        clean[role], problems, count = validate_split(raw[role], cfg, label_names)
        listed.extend(problems[: MAX_LISTED_PROBLEMS - len(listed)])
        total += count
    if total:
        raise DatasetValidationError(listed, total)
    return clean


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
