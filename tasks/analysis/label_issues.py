"""Where the training data is probably wrong: out-of-fold predictions passed to cleanlab.

The training split is cut into k folds; for each, a model of the same recipe is trained on the other
folds (the rows are taken from the cached tokenization, nothing is tokenized again) and scores the held
out fold's words. With every training sentence scored by a model that never saw it, cleanlab's
token-classification `find_label_issues` (confident learning) names the words whose given tag the model
finds unlikely, and the sentences holding them are ranked by cleanlab's label quality score. The data
is never edited: the finder writes a ranked list for a person to review.

Why the ranking calibrates the probabilities per tag first: an NER model is far surer of `O` than of
`I-ORG` (average self-confidence 0.9 against 0.4-0.5 on WikiANN-en), so on raw probabilities every
sentence with a hard but correct organisation ranks beside a real error. Dividing each tag's probability
by its confident threshold (cleanlab's average self-confidence of the words given that tag) asks how
unlikely a tag is *for that tag*; the sentence score is cleanlab's softmin over its words, so a sentence
is ranked by its few worst words, not only the single worst. On 2,000 WikiANN-en sentences with 5% of
their spans broken (bench/label_issues.py, four settings), this found 0.07-0.11 more of the broken
sentences in the top K than the raw `min` score.
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


def calibrated(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each word's tag probabilities divided by the tags' confident thresholds, renormalised."""
    from cleanlab.count import get_confident_thresholds

    thresholds = get_confident_thresholds(np.concatenate(labels), np.concatenate(probs))
    scaled = [p / thresholds for p in probs]
    return [p / p.sum(axis=1, keepdims=True) for p in scaled]


def rank_label_issues(
    word_labels: Sequence[Sequence[int]],
    log_probs: Sequence[np.ndarray],
    tokens: Sequence[Sequence[str]],
    label_names: Sequence[str],
    suggested: Sequence[Sequence[int]],
) -> list[dict[str, Any]]:
    """Sentences holding a word cleanlab flags, most suspect first (lowest calibrated label quality)."""
    from cleanlab.token_classification.filter import find_label_issues
    from cleanlab.token_classification.rank import get_label_quality_scores

    keep = [i for i, labels in enumerate(word_labels) if len(labels)]
    labels = [np.asarray(word_labels[i]) for i in keep]
    probs = [np.exp(log_probs[i]) / np.exp(log_probs[i]).sum(axis=1, keepdims=True) for i in keep]
    issues = find_label_issues(labels, probs)
    sentence_scores, _ = get_label_quality_scores(labels, calibrated(probs, labels), sentence_score_method="softmin")
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
