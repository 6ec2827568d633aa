"""Why the model errs: scores under several matching rules, errors by kind, and the sentences it gets most wrong.

seqeval's default mode (conlleval's) is what nerflow reports as F1. Beside it: seqeval's strict mode
(an entity counts only with its exact IOB2 tags), and the SemEval-2013 schemas computed by `nervaluate`:
strict (exact boundaries and type), exact (boundaries only), partial (overlap counts half) and type
(overlap with the right type), each with counts of correct, incorrect, partial, missed and spurious
entities, overall and per entity type.

Errors by kind compare gold and predicted spans (seqeval's reading of the tags): a gold entity is
`correct`, or has a prediction with the same boundaries and another type (`type`), an overlapping one
of its type with other boundaries (`boundary`), an overlapping one of another type and other
boundaries (`boundary+type`), or none overlapping (`missed`); a prediction overlapping no gold entity
is `spurious`. Counted under the gold type (spurious: the predicted type).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ERRORS_FILE = "errors.jsonl"  # in the run folder
SCHEMAS = ("strict", "exact", "partial", "ent_type")
COUNTS = ("correct", "incorrect", "partial", "missed", "spurious")
ERROR_KINDS = ("correct", "type", "boundary", "boundary+type", "missed", "spurious")


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity, as seqeval reads IOB2 tags."""
    from seqeval.metrics.sequence_labeling import get_entities

    return get_entities(list(tags))


def _result(r) -> dict[str, float | int]:
    return {k: getattr(r, k) for k in COUNTS} | {
        k: round(float(getattr(r, k)), 4) for k in ("precision", "recall", "f1")
    }


def schema_scores(y_true: list[list[str]], y_pred: list[list[str]]) -> dict[str, Any]:
    """seqeval strict mode and nervaluate's four schemas, overall and per entity type."""
    from nervaluate import Evaluator
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    types = sorted({kind for tags in [*y_true, *y_pred] for kind, _, _ in spans(tags)})
    found = Evaluator(y_true, y_pred, tags=types, loader="list").evaluate()
    strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    return {
        "seqeval_strict": {
            "precision": round(float(precision_score(y_true, y_pred, **strict)), 4),
            "recall": round(float(recall_score(y_true, y_pred, **strict)), 4),
            "f1": round(float(f1_score(y_true, y_pred, **strict)), 4),
        },
        "overall": {schema: _result(found["overall"][schema]) for schema in SCHEMAS},
        "per_entity": {
            kind: {schema: _result(r[schema]) for schema in SCHEMAS} for kind, r in found["entities"].items()
        },
    }


def _kind_of(gold: tuple[str, int, int], predicted: list[tuple[str, int, int]]) -> str:
    kind, start, end = gold
    overlapping = [p for p in predicted if p[1] <= end and p[2] >= start]
    if (kind, start, end) in overlapping:
        return "correct"
    if any((p[1], p[2]) == (start, end) for p in overlapping):
        return "type"
    if any(p[0] == kind for p in overlapping):
        return "boundary"
    return "boundary+type" if overlapping else "missed"


def sentence_errors(gold_tags: Sequence[str], predicted_tags: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, entity type) of every gold entity and of every spurious prediction of one sentence."""
    gold, predicted = spans(gold_tags), spans(predicted_tags)
    found = [(_kind_of(g, predicted), g[0]) for g in gold]
    spurious = [("spurious", p[0]) for p in predicted if not any(p[1] <= g[2] and p[2] >= g[1] for g in gold)]
    return found + spurious


def error_classes(y_true: list[list[str]], y_pred: list[list[str]]) -> dict[str, dict[str, int]]:
    """Counts of each kind (ERROR_KINDS) per entity type, and over all types ('all')."""
    table: dict[str, dict[str, int]] = {}
    for gold, predicted in zip(y_true, y_pred):
        for kind, entity in sentence_errors(gold, predicted):
            for key in (entity, "all"):
                table.setdefault(key, dict.fromkeys(ERROR_KINDS, 0))[kind] += 1
    return dict(sorted(table.items(), key=lambda item: (item[0] == "all", item[0])))


def sentence_losses(word_scores: Sequence[np.ndarray], word_labels: Sequence[Sequence[int]]) -> np.ndarray:
    """Each sentence's mean negative log-probability of its gold tags (its words, at their first subword)."""
    return np.array(
        [float(-np.mean(s[np.arange(len(g)), g])) if len(g) else 0.0 for s, g in zip(word_scores, word_labels)]
    )


def worst_sentences(
    tokens: Sequence[Sequence[str]],
    y_true: list[list[str]],
    y_pred: list[list[str]],
    losses: np.ndarray,
    n: int,
) -> list[dict[str, Any]]:
    """The n sentences of highest loss, with gold and predicted entities side by side."""

    def entities(words, tags):
        return [
            {"entity": k, "text": " ".join(words[a : b + 1]), "start_word": a, "end_word": b + 1}
            for k, a, b in spans(tags)
        ]

    rows = []
    for i in np.argsort(-losses)[:n]:
        words = list(tokens[i])
        rows.append(
            {
                "sentence": int(i),
                "loss": round(float(losses[i]), 4),
                "text": " ".join(words),
                "gold": entities(words, y_true[i]),
                "predicted": entities(words, y_pred[i]),
                "errors": [
                    f"{kind} {entity}" for kind, entity in sentence_errors(y_true[i], y_pred[i]) if kind != "correct"
                ],
            }
        )
    return rows
