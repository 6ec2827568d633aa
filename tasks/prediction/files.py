"""Batch prediction over files: read documents, tag them, write one JSON line per document.

Inputs, by extension and, where an extension holds several shapes, by content (the same reader and
detection as training, nerflow.tasks.data.sources): plain text (`.txt`: one document per line), word-per-line
blocks (`.conll`, `.iob`, and `.txt` or `.tsv` that hold them: a word and its columns per line, the
tag last, blank lines between sentences), tables (`.csv`, `.tsv` with a header and a `tokens` column),
JSON lines (`.jsonl`: an object per line with `text`, or pre-split `tokens`; optional `id`).

Output: `{"id", "text" or "tokens", "entities": [...]}` per input document, in input order; entities
of raw text carry character offsets, those of pre-split words carry word indices, so they line up
with the words given. Pre-split documents also get their word `tags`, in the scheme the model was
trained from (`nerflow_tag_scheme`) unless another is asked for. An output ending in `.conll` is
written as word-per-line blocks instead. With `labelled`, the input's tags (any scheme) are the gold
standard: they are checked before the model runs, and word-level seqeval scores are written beside
the predictions. Nothing is written unless everything succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nerflow.tasks.data.sources import file_format, parse_json, read_conll, read_delimited, read_lines
from nerflow.tasks.prediction.tagger import Document, NerPredictor
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.files import atomic_write_json, atomic_write_text


def _jsonl_document(row: Any, where: str, tags_column: str) -> tuple[Document, list | None]:
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return Document.from_text(row["text"]), row.get(tags_column)
    if isinstance(row, dict) and isinstance(row.get("tokens"), list) and all(isinstance(w, str) for w in row["tokens"]):
        return Document(list(row["tokens"])), row.get(tags_column)
    raise InputError(f"{where}: expected an object with 'text' (a string) or 'tokens' (a list of words)")


def _jsonl_documents(path: Path, tags_column: str) -> tuple[list[Document], list[Any], list[list | None]]:
    docs, ids, gold = [], [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        if line.strip():
            row = parse_json(line, f"{path}, line {lineno}")
            doc, tags = _jsonl_document(row, f"{path}, line {lineno}", tags_column)
            docs.append(doc)
            ids.append(row.get("id", len(ids)))
            gold.append(tags)
    return docs, ids, gold


def read_documents(
    path: Path, fmt: str = "auto", tags_column: str = "ner_tags"
) -> tuple[list[Document], list[Any], list[list | None]]:
    """(documents, ids, gold tags per document or None) from a prediction input file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    kind = file_format(path, fmt, "tokens", tags_column, text=True)
    if kind == "text":
        lines = read_lines(path)
        if lines and lines[-1] == "":
            lines.pop()
        return [Document.from_text(line) for line in lines], list(range(len(lines))), [None] * len(lines)
    if kind in ("conll", "csv", "tsv"):
        if kind == "conll":
            rows, _ = read_conll(path, "tokens", tags_column)
        else:
            rows, _ = read_delimited(path, "," if kind == "csv" else "\t", "tokens", tags_column, tags_required=False)
        return [Document(r["tokens"]) for r in rows], list(range(len(rows))), [r.get(tags_column) for r in rows]
    if kind == "jsonl":
        return _jsonl_documents(path, tags_column)
    raise InputError(f"{path}: prediction reads .txt, .jsonl, .conll, .iob, .csv or .tsv files, not {kind}")


def gold_tag_names(
    gold: list[list | None], docs: list[Document], label_names: list[str], path: Path
) -> tuple[list[list[str]], str]:
    """The gold tags in IOB2 (ids are the model's label ids; names may be in any scheme, found from the
    tags) and the scheme they were in. Every document needs one tag per word."""
    from nerflow.tasks.data.schemes import TagSchemeError, convert, detect_scheme

    names = []
    for i, (tags, doc) in enumerate(zip(gold, docs)):
        if not isinstance(tags, list) or len(tags) != len(doc.words):
            raise InputError(
                f"{path}, document {i}: --labelled needs one tag per word ({len(doc.words)} words, tags {tags!r:.60})"
            )
        names.append([label_names[t] if isinstance(t, int) and 0 <= t < len(label_names) else t for t in tags])
    used = sorted({t for tags in names for t in tags}, key=str)
    if not all(isinstance(t, str) for t in used):
        raise InputError(
            f"{path}: tags {[t for t in used if not isinstance(t, str)][:5]} are neither the model's label ids "
            "nor names"
        )
    try:
        scheme = detect_scheme(used, names).scheme
    except TagSchemeError as e:
        raise InputError(f"{path}: {e}") from None
    converted = [convert(tags, scheme, "iob2") for tags in names]
    unknown = sorted({t for tags in converted for t in tags if t not in label_names})
    if unknown:
        raise InputError(f"{path}: tags {unknown[:8]} are not the model's labels {label_names}")
    return converted, scheme


def prediction_lines(docs: list[Document], ids: list[Any], entities: list[list[dict]], tags: list[list[str]]) -> str:
    out = []
    for doc, doc_id, found, doc_tags in zip(docs, ids, entities, tags):
        source = {"text": doc.text} if doc.text is not None else {"tokens": doc.words, "tags": doc_tags}
        out.append(json.dumps({"id": doc_id, **source, "entities": found}, ensure_ascii=False))
    return "\n".join(out) + ("\n" if out else "")


def conll_lines(docs: list[Document], tags: list[list[str]]) -> str:
    """Word-per-line blocks: a word and its predicted tag per line, a blank line after each document."""
    return "".join(
        "".join(f"{w}\t{t}\n" for w, t in zip(doc.words, doc_tags)) + "\n" for doc, doc_tags in zip(docs, tags)
    )


def predict_file(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    fmt: str = "auto",
    labelled: bool = False,
    batch_size: int = 32,
    stride: int = 32,
    progress: Callable[[int, int], None] | None = None,
    scheme: str = "source",
    backend: str = "auto",
    predictor: NerPredictor | None = None,
) -> dict[str, Any]:
    """Tag every document of input_path into output_path (JSON lines, or word-per-line blocks for a
    .conll output); with labelled, also write OUTPUT.scores.json (word-level seqeval against the
    input's tags, checked before the model runs). Tags are written in `scheme` ('source': the scheme
    the model was trained from). Returns a summary."""
    from nerflow.tasks.data.schemes import SCHEMES

    docs, ids, gold = read_documents(Path(input_path), fmt)
    predictor = predictor or NerPredictor(model_dir, batch_size=batch_size, stride=stride, backend=backend)
    scheme = predictor.tag_scheme if scheme == "source" else scheme
    if scheme not in SCHEMES:
        raise InputError(f"--scheme {scheme!r}: one of source, {', '.join(SCHEMES)}")
    y_true, gold_scheme = (
        gold_tag_names(gold, docs, predictor.label_names, Path(input_path)) if labelled else (None, None)
    )
    scores = predictor.word_scores(docs, progress)
    tag_ids = predictor.tag_ids(scores)  # decoded once: entities, written tags and scores share it
    entities = predictor.predict_documents_from_scores(docs, scores, tag_ids)
    tags = predictor.tags(tag_ids, scheme)
    summary: dict[str, Any] = {
        "documents": len(docs),
        "words": sum(len(d.words) for d in docs),
        "entities": sum(map(len, entities)),
        "output": str(output_path),
        "tag_scheme": scheme,
    }
    if labelled:
        from nerflow.tasks.scoring.metrics import seqeval_scores

        y_pred = [[predictor.label_names[t] for t in doc] for doc in tag_ids]
        word_level = seqeval_scores(y_true, y_pred) | {
            "decoding": predictor.decoding,
            "documents": len(docs),
            "gold_tag_scheme": gold_scheme,
        }
        scores_path = atomic_write_json(Path(str(output_path) + ".scores.json"), word_level)
        summary |= {"scores": str(scores_path), "f1": word_level["f1"]}
    text = (
        conll_lines(docs, tags) if str(output_path).endswith(".conll") else prediction_lines(docs, ids, entities, tags)
    )
    atomic_write_text(Path(output_path), text)
    return summary
