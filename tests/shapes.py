"""The bundled WikiANN-en sample as files really come: other tagging schemes (IOB1, BIOES, BILOU, IO)
and other shapes (CoNLL-2003 with four columns and -DOCSTART-, word-per-line TSV with a header, a
table), written by code independent of nerflow's converters so the tests compare two implementations."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SAMPLE_DIR

LABELS = (SAMPLE_DIR / "labels.txt").read_text().split()


def sample(split: str, n: int | None = None) -> list[tuple[list[str], list[str]]]:
    """(words, IOB2 tags) of the first n sentences of a split of the bundled sample."""
    lines = (SAMPLE_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    return [(r["tokens"], [LABELS[t] for t in r["ner_tags"]]) for r in rows]


def entity_runs(tags: list[str]) -> list[tuple[str, int, int]]:
    """IOB2 spans (type, start, end), read the plain way (an I- that continues nothing starts one)."""
    spans: list[tuple[str, int, int]] = []
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and not (tag.startswith("I-") and tag[2:] == kind):
            spans.append((kind, start, i))
            start = None
        if tag.startswith("B-") or (tag.startswith("I-") and start is None):
            start, kind = i, tag[2:]
    return spans


def in_scheme(tags: list[str], scheme: str) -> list[str]:
    """IOB2 tags rewritten in another scheme, span by span."""
    out = ["O"] * len(tags)
    previous_end, previous_type = -1, None
    for kind, start, end in entity_runs(tags):
        n = end - start
        if scheme == "iob2":
            out[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
        elif scheme == "iob1":
            out[start:end] = [f"{'B' if (previous_end, previous_type) == (start, kind) else 'I'}-{kind}"] + [
                f"I-{kind}"
            ] * (n - 1)
        elif scheme in ("bioes", "bilou"):
            single, last = ("S", "E") if scheme == "bioes" else ("U", "L")
            out[start:end] = (
                [f"{single}-{kind}"] if n == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (n - 2) + [f"{last}-{kind}"]
            )
        elif scheme == "io":
            out[start:end] = [kind] * n
        previous_end, previous_type = end, kind
    return out


def has_adjacent_same_type(tags: list[str]) -> bool:
    runs = entity_runs(tags)
    return any(a[2] == b[1] and a[0] == b[0] for a, b in zip(runs, runs[1:]))


def write_jsonl(folder: Path, scheme: str, n: dict[str, int | None]) -> Path:
    """train/validation/test.jsonl with string tags in `scheme`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in n.items():
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for words, tags in sample(split, count):
                f.write(json.dumps({"tokens": words, "ner_tags": in_scheme(tags, scheme)}, ensure_ascii=False) + "\n")
    return folder


def write_conll2003(
    folder: Path,
    scheme: str = "iob1",
    n: dict[str, int | None] | None = None,
    ext: str = ".txt",
    names=("train", "valid", "test"),
) -> Path:
    """CoNLL-2003 as released: `-DOCSTART- -X- -X- O`, then WORD POS CHUNK TAG per line, space-separated,
    a blank line between sentences; IOB1 tags by default."""
    n = n or {"train": None, "validation": None, "test": None}
    folder.mkdir(parents=True, exist_ok=True)
    for (split, count), name in zip(n.items(), names):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for words, tags in sample(split, count):
            for word, tag in zip(words, in_scheme(tags, scheme)):
                lines.append(f"{word} NNP I-NP {tag}")
            lines.append("")
        (folder / f"{name}{ext}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tsv_blocks_with_header(folder: Path, n: dict[str, int | None]) -> Path:
    """Word-per-line TSV whose header names the columns; the tag is not the last column."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in n.items():
        lines = ["ner_tags\ttokens\tpos"]
        for words, tags in sample(split, count):
            lines += [f"{tag}\t{word}\tX" for word, tag in zip(words, tags)] + [""]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tsv_table(folder: Path, n: dict[str, int | None]) -> Path:
    """A TSV table: a header, one sentence per row, words and tags space-separated."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in n.items():
        lines = ["tokens\tner_tags"] + [f"{' '.join(w)}\t{' '.join(t)}" for w, t in sample(split, count)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
