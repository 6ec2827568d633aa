"""Checking every row of every split, and what is computed from the clean rows: label names,
the content fingerprint and the profile. A problem names its file, split, row, line and field."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nerflow.tasks.data.schemes import (
    SchemeFinding,
    TagSchemeError,
    check_declared,
    convert,
    detect_scheme,
    iob2_label_names,
    split_tag,
)
from nerflow.tasks.data.sources import RawSplit, read_labels_file
from nerflow.tasks.refs import SPLIT_ROLES
from nerflow.tasks.runtime.errors import MAX_LISTED_PROBLEMS, DatasetValidationError
from nerflow.tasks.settings import DatasetSettings

if TYPE_CHECKING:
    import pandas as pd

_FINGERPRINT_VERSION = "nerflow-dataset-v1"


@dataclass
class CleanSplit:
    tokens: list[list[str]]
    tags: list[list[int]]
    wheres: list[str] = field(default_factory=list)
    """Where each row came from (file, split, row, line), for messages about it."""
    iob_violations: int = 0
    iob_examples: list[str] = field(default_factory=list)


@dataclass
class LabelSource:
    """The tag names in id order, and where they came from (for messages)."""

    names: list[str]
    origin: str


def resolve_label_names(cfg: DatasetSettings, splits: dict[str, RawSplit], folder: Path | None) -> LabelSource:
    """Tag names in id order: dataset.label_names, the dataset's ClassLabel feature, labels.txt, or the
    string tags themselves. dataset.label_names and a labels.txt that disagree are refused: one of them
    would give every id the wrong name."""
    from_file = labels_file_agreeing(cfg, folder) if folder is not None else None
    if cfg.label_names:
        return LabelSource(list(cfg.label_names), "dataset.label_names")
    for raw in splits.values():
        if raw.features_label_names:
            return LabelSource(raw.features_label_names, f"{raw.origin}'s ClassLabel")
    if from_file:
        return LabelSource(from_file, str(folder / "labels.txt"))
    string_tags = {
        tag
        for raw in splits.values()
        for row in raw.rows
        if isinstance(row, dict) and isinstance(row.get(cfg.tags_column), list)
        for tag in row[cfg.tags_column]
    }
    if string_tags and all(isinstance(t, str) for t in string_tags):
        return LabelSource(derive_label_names(string_tags), f"the tags of {cfg.source}")
    raise DatasetValidationError(
        [
            f"{next(iter(splits.values())).origin}, field {cfg.tags_column!r}: tags are ids but no label "
            "names are known; set dataset.label_names or add a labels.txt beside the files"
        ]
    )


def labels_file_agreeing(cfg: DatasetSettings, folder: Path) -> list[str] | None:
    """folder/labels.txt (checked by read_labels_file), refused if dataset.label_names says otherwise:
    one of them would give every id the wrong name."""
    from_file = read_labels_file(folder)
    if cfg.label_names and from_file is not None and from_file != list(cfg.label_names):
        raise DatasetValidationError(
            [
                f"dataset.label_names {list(cfg.label_names)} contradicts {folder / 'labels.txt'} {from_file}: ids "
                "would get other names; remove one of them or make them agree"
            ]
        )
    return from_file


_PREFIX_ORDER = {p: i for i, p in enumerate("BIESLU")}


def derive_label_names(tags: Iterable[str]) -> list[str]:
    """O first, then the tags by entity type in alphabetical order. B-/I- tags get the full IOB2 pair
    per type (I- added where only B- was seen); other schemes' tags are kept as they are."""
    tags = {t for t in tags if t != "O" and t.strip()}
    if {split_tag(t)[0] for t in tags} <= {"B", "I"}:
        types = sorted({split_tag(t)[1] for t in tags})
        return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    return ["O"] + sorted(tags, key=lambda t: (split_tag(t)[1], _PREFIX_ORDER.get(split_tag(t)[0], -1)))


def _iob_violation(prev: str, cur: str) -> bool:
    """An I-X tag must follow B-X or I-X (IOB2); anything else is a span that starts with I-."""
    return cur.startswith("I-") and not (prev[2:] == cur[2:] and prev[:2] in ("B-", "I-"))


class _Problems:
    """Problems grouped by kind: the first of each kind with how many more there were like it, at most
    MAX_LISTED_PROBLEMS kinds listed, and how many problems there were in all."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.total = 0

    def add(self, kind: str, message: str, value: Any = None) -> None:
        self.total += 1
        group = self.groups.setdefault(kind, {"first": message, "count": 0, "values": set()})
        group["count"] += 1
        if value is not None:
            group["values"].add(value)

    def error(self, labels: LabelSource) -> DatasetValidationError:
        lines = self.lines(labels)
        unlisted = sum(g["count"] for g in list(self.groups.values())[MAX_LISTED_PROBLEMS:])
        return DatasetValidationError(lines[:MAX_LISTED_PROBLEMS], self.total, unlisted)

    def lines(self, labels: LabelSource) -> list[str]:
        lines = []
        for kind, group in self.groups.items():
            if kind == "unknown-id":
                ids = sorted(group["values"])
                lines.append(
                    f"{labels.origin} has {len(labels.names)} names (ids 0..{len(labels.names) - 1}); the tags "
                    "use ids up "
                    f"to {ids[-1]}: {group['count']} tag(s) without a name, the first: {group['first']}"
                )
            elif kind == "unknown-tag":
                unknown = sorted(group["values"], key=str)
                lines.append(
                    f"tags {', '.join(map(repr, unknown[:8]))}{' ...' if len(unknown) > 8 else ''} are not "
                    "among the names of "
                    f"{labels.origin} {labels.names}: {group['count']} tag(s), the first: {group['first']}"
                )
            else:
                more = group["count"] - 1
                lines.append(group["first"] + (f" (and {more} more like it)" if more else ""))
        return lines


def _shape_problem(row: Any, where: str, tok_col: str, tag_col: str) -> tuple[str, str] | None:
    """The first thing wrong with a row's structure (not a mapping, a field missing or of the wrong
    kind), as (kind, message)."""
    if not isinstance(row, dict):
        return "not-object", f"{where}: expected an object with fields {tok_col!r} and {tag_col!r}"
    missing = [c for c in (tok_col, tag_col) if c not in row]
    if missing:
        return f"missing-{missing[0]}", f"{where}, field {missing[0]!r}: missing"
    tokens, tags = row[tok_col], row[tag_col]
    if not isinstance(tokens, list):
        return "tokens-type", f"{where}, field {tok_col!r}: expected a list of words, got {type(tokens).__name__}"
    if not isinstance(tags, list):
        return "tags-type", f"{where}, field {tag_col!r}: expected a list of tags, got {type(tags).__name__}"
    if not tokens:
        return "no-words", f"{where}, field {tok_col!r}: sentence has no words"
    if len(tokens) != len(tags):
        return "length", f"{where}, field {tag_col!r}: {len(tags)} tags for {len(tokens)} words"
    return None


def _word_problems(tokens: list[Any], where: str, tok_col: str) -> list[tuple[str, str]]:
    problems = []
    for j, word in enumerate(tokens):
        if not isinstance(word, str):
            problems.append(
                ("word-type", f"{where}, field {tok_col!r}[{j}]: word is {type(word).__name__}, not a string")
            )
        elif not word.strip():
            problems.append(("empty-word", f"{where}, field {tok_col!r}[{j}]: empty word {word!r}"))
    return problems


def _tag_ids(
    tags: list[Any], where: str, tag_col: str, label_names: Sequence[str], index: dict[str, int], problems: _Problems
) -> list[int] | None:
    """Tag ids of a row (ids or names accepted); None, with the problems added, if any tag is neither."""
    ids, bad = [], False
    for j, tag in enumerate(tags):
        here = f"{where}, field {tag_col!r}[{j}]"
        if isinstance(tag, bool) or not isinstance(tag, (int, str)):
            problems.add("tag-type", f"{here}: tag {tag!r} is neither an id nor a name")
        elif isinstance(tag, int) and not 0 <= tag < len(label_names):
            problems.add("unknown-id", f"{here}: unknown tag id {tag}", tag)
        elif isinstance(tag, str) and tag not in index:
            problems.add("unknown-tag", f"{here}: unknown tag {tag!r}", tag)
        else:
            ids.append(tag if isinstance(tag, int) else index[tag])
            continue
        bad = True
    return None if bad else ids


def validate_split(raw: RawSplit, cfg: DatasetSettings, label_names: Sequence[str], problems: _Problems) -> CleanSplit:
    """Check every row; the clean split of the rows without problems (the problems go to `problems`)."""
    clean = CleanSplit([], [])
    if not raw.rows:
        problems.add(f"empty-{raw.name}", f"{raw.origin}, split {raw.name!r}: split is empty")
    index = {name: i for i, name in enumerate(label_names)}
    tok_col, tag_col = cfg.tokens_column, cfg.tags_column
    for i, row in enumerate(raw.rows):
        where = raw.where(i)
        if shape := _shape_problem(row, where, tok_col, tag_col):
            problems.add(*shape)
            continue
        words = _word_problems(row[tok_col], where, tok_col)
        for kind, message in words:
            problems.add(kind, message)
        ids = _tag_ids(row[tag_col], where, tag_col, label_names, index, problems)
        if ids is not None and not words:
            clean.tokens.append(row[tok_col])
            clean.tags.append(ids)
            clean.wheres.append(where)
    return clean


def validate_splits(raw: dict[str, RawSplit], cfg: DatasetSettings, labels: LabelSource) -> dict[str, CleanSplit]:
    """Every split checked; one DatasetValidationError listing every kind of problem of all splits once."""
    problems = _Problems()
    clean = {role: validate_split(raw[role], cfg, labels.names, problems) for role in SPLIT_ROLES}
    if problems.total:
        raise problems.error(labels)
    return clean


def to_training_tags(
    clean: dict[str, CleanSplit], cfg: DatasetSettings, labels: LabelSource
) -> tuple[dict[str, CleanSplit], list[str], SchemeFinding]:
    """The splits with their tags in IOB2 (nerflow.tasks.data.schemes), the IOB2 tag names and the source's scheme
    (dataset.tag_scheme, or found from the tags). I- tags of IOB2 data that start a span are counted."""
    source = labels.names
    sequences = ([source[t] for t in tags] for s in clean.values() for tags in s.tags)
    try:
        if declared := cfg.resolved_scheme():
            check_declared(declared, source)
            finding = SchemeFinding(declared, "dataset.tag_scheme")
        else:
            finding = detect_scheme(source, sequences)
    except TagSchemeError as e:
        raise DatasetValidationError([f"{labels.origin}: {e}"]) from None
    names = iob2_label_names(source, finding.scheme)
    index = {n: i for i, n in enumerate(names)}
    converted = {}
    for role, split in clean.items():
        tags = (
            split.tags
            if finding.scheme == "iob2"
            else [[index[t] for t in convert([source[i] for i in ids], finding.scheme, "iob2")] for ids in split.tags]
        )
        converted[role] = count_violations(CleanSplit(split.tokens, tags, split.wheres), names)
    return converted, names, finding


def count_violations(split: CleanSplit, label_names: Sequence[str]) -> CleanSplit:
    """Count I- tags that do not continue a span of their type (kept; seqeval reads them as span starts)."""
    for tags, where in zip(split.tags, split.wheres):
        names = [label_names[t] for t in tags]
        bad = [j for j, cur in enumerate(names) if _iob_violation(names[j - 1] if j else "O", cur)]
        if bad:
            split.iob_violations += len(bad)
            if len(split.iob_examples) < 5:
                split.iob_examples.append(f"{where}: {names[bad[0]]} after {names[bad[0] - 1] if bad[0] else 'start'}")
    return split


def dataset_fingerprint(label_names: Sequence[str], splits: dict[str, CleanSplit], scheme: str = "iob2") -> str:
    """A content hash of exactly what is trained on: labels, and every split's words and tags in order.
    Data converted from another scheme says which (its model writes predictions back in it)."""
    h = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    h.update(json.dumps(list(label_names) if scheme == "iob2" else [list(label_names), scheme]).encode())
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


def profile_splits(label_names: Sequence[str], splits: dict[str, CleanSplit], scheme: str = "iob2") -> pd.DataFrame:
    """Per split: sentences, words, entities per type, sentence-length quantiles, IOB2 violations, and
    the tagging scheme the source was written in."""
    import pandas as pd  # here: a run refused by its policy never profiles, and pandas takes a while to load

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
        rec["tag_scheme"] = scheme
        records.append(rec)
    return pd.DataFrame.from_records(records)
