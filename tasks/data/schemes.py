"""Tagging schemes: how a dataset marks where entities start and end, and IOB2, the one nerflow trains on.

Real files come in several schemes (CoNLL-2003 as released is IOB1; many corpora use BIOES or BILOU;
some just name the type, IO). Trained as they are, they teach the model tags that IOB2-valid decoding
forbids (an IOB1 entity starts with I-) or that seqeval reads differently. So each dataset's scheme
is found from its tags (or set by `dataset.tag_scheme`), its tags are converted span for span to IOB2
for training, decoding and scoring, and predictions can be written back in the source scheme.

| scheme | a span of type X | one-word span |
|---|---|---|
| iob2 | B-X I-X ... | B-X |
| iob1 | I-X I-X ...; B-X only where a span of X directly follows another | I-X |
| bioes (iobes) | B-X I-X ... E-X | S-X |
| bilou | B-X I-X ... L-X | U-X |
| io | X X ... (bare type names) | X |

Conversion keeps every span, so it is lossless, except that IO cannot tell two adjacent spans of one
type from one long span (that is IO's own limit, not the conversion's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nerflow.tasks.runtime.errors import InputError

SCHEMES = ("iob1", "iob2", "bioes", "bilou", "io")
PREFIXES = set("BIESLU")
# B-/I- data whose spans mostly start with I- is IOB1 if at most this share start with B- after O
# (stray tags); more than that, and the tags mix the two schemes.
MIXED_SHARE = 0.02


class TagSchemeError(InputError):
    """The tags fit no scheme, or more than one; the message says which and how to choose."""


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type): ('B', 'PER') for B-PER, ('', 'PER') for a bare type, ('O', '') for O."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in PREFIXES:
        return tag[0], tag[2:]
    return "", tag


@dataclass
class SchemeFinding:
    scheme: str
    evidence: str


def _span_starts(sequences: Iterable[Sequence[str]]) -> tuple[int, int, int]:
    """(I- tags that open a span, B- tags after O or another type, B- tags right after a span of their type)."""
    i_starts = b_fresh = b_adjacent = 0
    for tags in sequences:
        previous = "O"
        for tag in tags:
            prefix, kind = split_tag(tag)
            continues = split_tag(previous)[1] == kind and previous != "O"
            if prefix == "I" and not continues:
                i_starts += 1
            elif prefix == "B":
                b_adjacent, b_fresh = (b_adjacent + 1, b_fresh) if continues else (b_adjacent, b_fresh + 1)
            previous = tag
    return i_starts, b_fresh, b_adjacent


def detect_scheme(label_names: Sequence[str], sequences: Iterable[Sequence[str]]) -> SchemeFinding:
    """The scheme the tags are written in, from the names used and, for B-/I- tags, where spans start."""
    parts = [split_tag(n) for n in label_names if n != "O"]
    prefixes = {p for p, _ in parts if p}
    bare = sorted(t for p, t in parts if not p)
    if bare and prefixes:
        prefixed = sorted(n for n in label_names if split_tag(n)[0] not in ("", "O"))
        raise TagSchemeError(
            f"tags mix bare types ({', '.join(bare[:4])}) with prefixed tags ({', '.join(prefixed[:4])}): they fit no "
            "tagging scheme; fix the tags, or set dataset.tag_scheme to the one they are meant to be in"
        )
    if bare:
        return SchemeFinding("io", f"bare entity types ({', '.join(bare[:4])})")
    if prefixes & {"E", "S"} and prefixes & {"L", "U"}:
        raise TagSchemeError(
            "tags use both E-/S- (BIOES) and L-/U- (BILOU) prefixes: they fit no scheme; set dataset.tag_scheme "
            "to bioes or bilou if one of them is meant"
        )
    if prefixes & {"E", "S"}:
        return SchemeFinding("bioes", "E-/S- prefixes")
    if prefixes & {"L", "U"}:
        return SchemeFinding("bilou", "L-/U- prefixes")
    i_starts, b_fresh, b_adjacent = _span_starts(sequences)
    if i_starts == 0:
        return SchemeFinding("iob2", "every span starts with B-")
    if b_fresh == 0:
        return SchemeFinding("iob1", f"{i_starts} spans start with I-, B- only between adjacent spans ({b_adjacent})")
    if i_starts <= b_fresh:  # IOB2 with stray I- starts, as silver-standard data has them
        return SchemeFinding(
            "iob2", f"{b_fresh} spans start with B-, {i_starts} with I- (kept, counted as span starts)"
        )
    if b_fresh / (i_starts + b_fresh) <= MIXED_SHARE:
        return SchemeFinding("iob1", f"{i_starts} spans start with I-, {b_fresh} with B- after O")
    raise TagSchemeError(
        f"tags mix IOB1 span starts ({i_starts} I- tags after O or another type) with IOB2 span starts "
        f"({b_fresh} B- tags after O): set dataset.tag_scheme to iob1 or iob2"
    )


def check_declared(scheme: str, label_names: Sequence[str]) -> None:
    """dataset.tag_scheme must fit the tag names it is given for."""
    prefixes = {split_tag(n)[0] for n in label_names if n != "O"}
    allowed = {
        "iob1": {"B", "I"},
        "iob2": {"B", "I"},
        "bioes": {"B", "I", "E", "S"},
        "bilou": {"B", "I", "L", "U"},
        "io": {"", "I"},
    }[scheme]
    if not prefixes <= allowed:
        odd = sorted(n for n in label_names if n != "O" and split_tag(n)[0] not in allowed)
        raise TagSchemeError(
            f"dataset.tag_scheme={scheme} does not fit the tags {', '.join(odd[:6])}; set it to auto to detect "
            "the scheme"
        )


def spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of every entity in a tag sequence of the given scheme."""
    found: list[tuple[str, int, int]] = []
    start, kind = None, ""
    for j, tag in enumerate(tags):
        prefix, tag_type = split_tag(tag)
        begins = prefix in ("B", "S", "U") if scheme != "iob1" else prefix == "B"
        if prefix == "O" or tag_type != kind or begins or start is None:
            if start is not None:
                found.append((kind, start, j))
            start, kind = (None, "") if prefix == "O" else (j, tag_type)
        if prefix in ("E", "S", "L", "U") and start is not None:
            found.append((kind, start, j + 1))
            start, kind = None, ""
    if start is not None:
        found.append((kind, start, len(tags)))
    return found


def write_spans(length: int, entities: Iterable[tuple[str, int, int]], scheme: str) -> list[str]:
    """A tag sequence of the given scheme for these spans (the inverse of `spans`)."""
    tags = ["O"] * length
    previous_end, previous_type = -1, ""
    for kind, start, end in sorted(entities, key=lambda e: e[1]):
        if scheme == "io":
            tags[start:end] = [kind] * (end - start)
        elif scheme == "iob1":
            first = "B" if previous_end == start and previous_type == kind else "I"
            tags[start:end] = [f"{first}-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        elif scheme in ("bioes", "bilou") and end - start == 1:
            tags[start] = f"{'S' if scheme == 'bioes' else 'U'}-{kind}"
        elif scheme in ("bioes", "bilou"):
            last = "E" if scheme == "bioes" else "L"
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 2) + [f"{last}-{kind}"]
        else:
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        previous_end, previous_type = end, kind
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    """The same spans in another scheme. IOB2 to IOB2 is left as it is (stray I- starts included)."""
    if source == target:
        return list(tags)
    return write_spans(len(tags), spans(tags, source), target)


def entity_types(label_names: Sequence[str]) -> list[str]:
    """Entity types in the order the label names first mention them."""
    seen: dict[str, None] = {}
    for name in label_names:
        if name != "O":
            seen.setdefault(split_tag(name)[1], None)
    return list(seen)


def iob2_label_names(label_names: Sequence[str], scheme: str) -> list[str]:
    """The IOB2 tag set training uses: the source's own names for IOB2 data (ids kept), else O, then
    B-/I- of each type in the order the source names them."""
    if scheme == "iob2":
        return list(label_names)
    return ["O"] + [f"{p}-{t}" for t in entity_types(label_names) for p in ("B", "I")]
