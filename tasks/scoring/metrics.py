"""Word-level NER scores with seqeval, shared by training (model selection) and evaluation.

A word's scores are the model's scores at its first subword; its tag comes from decoding them
(nerflow.tasks.scoring.decoding). Words the model never saw (cut by truncation, or yielding no subword) are predicted
`O`, so they count against recall instead of vanishing from the score. The tutorial's subword-level
score is kept only for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nerflow.tasks.data.alignment import IGNORE_INDEX, align_labels
from nerflow.tasks.refs import EvaluationRef
from nerflow.tasks.scoring.decoding import decode

WORD_LEVEL_NOTE = (
    "seqeval (default mode) at word level: one prediction per word, taken at its first subword; words "
    "with no subword in the input (truncated, or yielding no subword) count as predicted O"
)
DECODING_NOTE = {
    "iob2": "tags decoded as the most likely valid IOB2 sequence per sentence (Viterbi; I-X only after B-X or I-X)",
    "argmax": "each word tagged with its most likely label, as transformers' token-classification pipeline does",
}
SUBWORD_NOTE = (
    "for comparison only: the tutorial's score, seqeval over every subword with the word's tag copied "
    "onto each piece (B- repeated); it is not a word-level F1"
)


def word_level_sequences(
    word_scores: Sequence[np.ndarray],
    word_labels: Sequence[Sequence[int]],
    label_names: Sequence[str],
    decoding: str,
) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag sequences, one tag per word of every sentence (see nerflow.tasks.scoring.decoding)."""
    predicted = decode(word_scores, label_names, decoding)
    y_true = [[label_names[g] for g in gold] for gold in word_labels]
    y_pred = [[label_names[p] for p in tags] for tags in predicted]
    return y_true, y_pred


def subword_level_sequences(
    predictions: Sequence[Sequence[int]],
    word_ids: Sequence[Sequence[int | None]],
    word_labels: Sequence[Sequence[int]],
    label_names: Sequence[str],
) -> tuple[list[list[str]], list[list[str]]]:
    """The tutorial's scoring: every subword is a 'word' and carries its word's tag (B- copied)."""
    y_true, y_pred = [], []
    for preds, wids, gold in zip(predictions, word_ids, word_labels):
        labels = align_labels(wids, gold, "tutorial", {})
        keep = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        y_true.append([label_names[labels[i]] for i in keep])
        y_pred.append([label_names[int(preds[i])] if preds[i] >= 0 else "O" for i in keep])
    return y_true, y_pred


def seqeval_scores(y_true: list[list[str]], y_pred: list[list[str]]) -> dict[str, Any]:
    """Overall (micro) precision/recall/F1, tag accuracy, and per-entity precision/recall/F1/support."""
    # seqeval pulls in scikit-learn and scipy: imported when scoring, not when a cached run starts.
    from seqeval.metrics import accuracy_score, classification_report

    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    overall = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    per_entity = {
        name: {
            "precision": float(r["precision"]),
            "recall": float(r["recall"]),
            "f1": float(r["f1-score"]),
            "support": int(r["support"]),
        }
        for name, r in report.items()
        if not name.endswith(" avg")
    }
    return {
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "f1": float(overall["f1-score"]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "support": int(overall["support"]),
        "per_entity": per_entity,
    }


def entity_type(tag: str) -> str:
    return "O" if tag == "O" else tag[2:]


def type_confusion(y_true: list[list[str]], y_pred: list[list[str]], label_names: Sequence[str]) -> dict[str, Any]:
    """Word counts by (gold entity type, predicted entity type), B-/I- merged; O first."""
    types = ["O"] + sorted({entity_type(n) for n in label_names if n != "O"})
    index = {t: i for i, t in enumerate(types)}
    matrix = [[0] * len(types) for _ in types]
    for gold, pred in zip(y_true, y_pred):
        for g, p in zip(gold, pred):
            matrix[index[entity_type(g)]][index[entity_type(p)]] += 1
    return {"labels": types, "matrix": matrix}


def per_entity_table(ev: EvaluationRef, split: str = "test") -> list[dict[str, Any]]:
    return [
        {"entity": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}}
        for name, s in sorted(ev.word_level[split]["per_entity"].items())
    ]
