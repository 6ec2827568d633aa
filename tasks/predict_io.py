"""Batch prediction over files: read documents, tag them, write one JSON line per document.

Inputs: plain text (`.txt`: one document per line), JSON lines (`.jsonl`: an object per line with
`text`, or pre-split `tokens`; optional `id`), CoNLL (`.conll`/`.iob`: a word and its tag per line,
blank lines between sentences). Output: `{"id", "text" or "tokens", "entities": [...]}` per input line,
in input order; entities of raw text carry character offsets, those of pre-split words carry word
indices, so they line up with the words given. With `labelled`, the input's tags are the gold standard
and word-level seqeval scores are written beside the predictions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.errors import InputError
from tasks.predict import Document, NerPredictor
from tasks.sources import parse_json, read_conll, read_lines
from tasks.storage import atomic_write_json, atomic_write_text

FORMATS = {".txt": "text", ".jsonl": "jsonl", ".conll": "conll", ".iob": "conll"}


def input_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix not in FORMATS:
        raise InputError(f"{path}: cannot tell the format from the extension; pass --format text, jsonl or conll")
    return FORMATS[path.suffix]


def _jsonl_document(row: Any, where: str, tags_column: str) -> tuple[Document, list | None]:
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return Document.from_text(row["text"]), row.get(tags_column)
    if isinstance(row, dict) and isinstance(row.get("tokens"), list) and all(isinstance(w, str) for w in row["tokens"]):
        return Document(list(row["tokens"])), row.get(tags_column)
    raise InputError(f"{where}: expected an object with 'text' (a string) or 'tokens' (a list of words)")


def read_documents(path: Path, fmt: str = "auto", tags_column: str = "ner_tags") -> tuple[list[Document], list[Any], list[list | None]]:
    """(documents, ids, gold tags per document or None) from a prediction input file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    kind = input_format(path, fmt)
    if kind == "text":
        lines = read_lines(path)
        if lines and lines[-1] == "":
            lines.pop()
        return [Document.from_text(line) for line in lines], list(range(len(lines))), [None] * len(lines)
    if kind == "conll":
        rows, _ = read_conll(path, "tokens", tags_column)
        return [Document(r["tokens"]) for r in rows], list(range(len(rows))), [r[tags_column] for r in rows]
    docs, ids, gold = [], [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        if line.strip():
            row = parse_json(line, f"{path}, line {lineno}")
            doc, tags = _jsonl_document(row, f"{path}, line {lineno}", tags_column)
            docs.append(doc)
            ids.append(row.get("id", len(ids)))
            gold.append(tags)
    return docs, ids, gold


def gold_tag_names(gold: list[list | None], docs: list[Document], label_names: list[str], path: Path) -> list[list[str]]:
    """The gold tags as names (ids are the model's label ids); every document needs one per word."""
    names = []
    for i, (tags, doc) in enumerate(zip(gold, docs)):
        if not isinstance(tags, list) or len(tags) != len(doc.words):
            raise InputError(f"{path}, document {i}: --labelled needs one tag per word ({len(doc.words)} words, tags {tags!r:.60})")
        converted = [label_names[t] if isinstance(t, int) and 0 <= t < len(label_names) else t for t in tags]
        unknown = sorted({t for t in converted if t not in label_names}, key=str)
        if unknown:
            raise InputError(f"{path}, document {i}: tags {unknown} are not the model's labels {label_names}")
        names.append(converted)
    return names


def prediction_lines(docs: list[Document], ids: list[Any], entities: list[list[dict]]) -> str:
    out = []
    for doc, doc_id, found in zip(docs, ids, entities):
        source = {"text": doc.text} if doc.text is not None else {"tokens": doc.words}
        out.append(json.dumps({"id": doc_id, **source, "entities": found}, ensure_ascii=False))
    return "\n".join(out) + ("\n" if out else "")


def predict_file(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    fmt: str = "auto",
    labelled: bool = False,
    batch_size: int = 32,
    stride: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Tag every document of input_path into output_path (JSON lines); with labelled, also write
    OUTPUT.scores.json (word-level seqeval against the input's tags). Returns a summary."""
    docs, ids, gold = read_documents(Path(input_path), fmt)
    predictor = NerPredictor(model_dir, batch_size=batch_size, stride=stride)
    scores = predictor.word_scores(docs, progress)
    entities = predictor.predict_documents_from_scores(docs, scores)
    atomic_write_text(Path(output_path), prediction_lines(docs, ids, entities))
    summary: dict[str, Any] = {"documents": len(docs), "words": sum(len(d.words) for d in docs), "entities": sum(map(len, entities)), "output": str(output_path)}
    if labelled:
        from tasks.decoding import decode
        from tasks.metrics import seqeval_scores

        names = predictor.label_names
        y_true = gold_tag_names(gold, docs, names, Path(input_path))
        y_pred = [[names[t] for t in tags] for tags in decode(scores, names, predictor.decoding)]
        word_level = seqeval_scores(y_true, y_pred) | {"decoding": predictor.decoding, "documents": len(docs)}
        scores_path = atomic_write_json(Path(str(output_path) + ".scores.json"), word_level)
        summary |= {"scores": str(scores_path), "f1": word_level["f1"]}
    return summary
