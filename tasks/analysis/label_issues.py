"""Where the training data is probably wrong: out-of-fold predictions passed to cleanlab.

The training split is cut into k folds; for each, a model of the same recipe is trained on the other
folds (the rows are taken from the cached tokenization, nothing is tokenized again) and scores the held
out fold's words. With every training sentence scored by a model that never saw it, cleanlab's
token-classification `find_label_issues` and `get_label_quality_scores` (confident learning) name the
words whose given tag the model finds unlikely, and rank the sentences holding them. The data is never
edited: the finder writes a ranked list for a person to review.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nerflow.tasks.refs import ModelRef, TokenizedRef, TrainJob

ISSUES_FILE = "label_issues.jsonl"  # in the run folder


def fold_of(n: int, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each of n sentences: a seeded shuffle cut into k near-equal parts."""
    order = np.random.default_rng(seed).permutation(n)
    folds = np.empty(n, dtype=np.int64)
    for fold, part in enumerate(np.array_split(order, k)):
        folds[part] = fold
    return folds


def fold_tokenized(tokenized: TokenizedRef, train_rows: np.ndarray, folder: Path) -> TokenizedRef:
    """The tokenized dataset with only `train_rows` in its train split (validation and test as they are)."""
    import datasets

    data = tokenized.load()
    subset = datasets.DatasetDict({**data, "train": data["train"].select(train_rows.tolist())})
    subset.save_to_disk(str(folder / "data"))
    return tokenized.model_copy(update={"path": str(folder), "cache_key": f"{tokenized.cache_key}-{folder.name}"})


def out_of_fold_log_probs(
    tokenized: TokenizedRef,
    job: TrainJob,
    k: int,
    train: Callable[[TrainJob], ModelRef | None],
    score: Callable[[ModelRef, Any], list[np.ndarray]],
    workdir: Path,
) -> list[np.ndarray]:
    """Per training sentence, (words, labels) log-probabilities from the fold model that did not see it."""
    split = tokenized.load()["train"]
    folds = fold_of(len(split), k, job.recipe.seed)
    scores: list[np.ndarray] = [np.empty(0)] * len(split)
    for fold in range(k):
        folder = workdir / f"fold-{fold + 1}-of-{k}"
        held_out = np.flatnonzero(folds == fold)
        fold_data = fold_tokenized(tokenized, np.flatnonzero(folds != fold), folder / "tokenized")
        model = train(job.model_copy(update={"tokenized": fold_data, "run_dir": str(folder), "run_name": folder.name}))
        for row, word_scores in zip(held_out, score(model, split.select(held_out.tolist()))):
            scores[row] = word_scores
    return scores


def rank_label_issues(
    word_labels: Sequence[Sequence[int]],
    log_probs: Sequence[np.ndarray],
    tokens: Sequence[Sequence[str]],
    label_names: Sequence[str],
    suggested: Sequence[Sequence[int]],
) -> list[dict[str, Any]]:
    """Sentences holding a word cleanlab flags, most suspect first (lowest label quality score)."""
    from cleanlab.token_classification.filter import find_label_issues
    from cleanlab.token_classification.rank import get_label_quality_scores

    keep = [i for i, labels in enumerate(word_labels) if len(labels)]
    labels = [np.asarray(word_labels[i]) for i in keep]
    probs = [np.exp(log_probs[i]) / np.exp(log_probs[i]).sum(axis=1, keepdims=True) for i in keep]
    issues = find_label_issues(labels, probs)
    sentence_scores, _ = get_label_quality_scores(labels, probs)
    flagged: dict[int, list[int]] = {}
    for sentence, word in issues:
        flagged.setdefault(sentence, []).append(word)
    rows = []
    for local in sorted(flagged, key=lambda s: sentence_scores[s]):
        i = keep[local]
        rows.append(
            {
                "sentence": i,
                "score": round(float(sentence_scores[local]), 6),
                "tokens": list(tokens[i]),
                "given": [label_names[t] for t in word_labels[i]],
                "suggested": [label_names[t] for t in suggested[i]],
                "words": sorted(flagged[local]),
            }
        )
    return rows
