"""Word labels onto subwords: one label per subword position, looked up by the position's word index.

Alignment is by word index, never by a running counter, so a word that yields no subword (a zero-width
joiner, a control character) simply has no position and cannot shift the labels of the words after it.
Used by tokenization (training labels) and by scoring (the tutorial's subword-level comparison).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nerflow.tasks.settings import AlignmentStrategy

IGNORE_INDEX = -100  # positions the loss (and the word-level metric) skip


def b_to_i_map(label_names: Sequence[str]) -> dict[int, int]:
    """Label id of B-X -> label id of I-X, for the types that have both."""
    index = {n: i for i, n in enumerate(label_names)}
    return {i: index[f"I-{n[2:]}"] for i, n in enumerate(label_names) if n.startswith("B-") and f"I-{n[2:]}" in index}


def align_labels(
    word_ids: Sequence[int | None],
    word_labels: Sequence[int],
    strategy: AlignmentStrategy,
    b_to_i: Mapping[int, int],
) -> list[int]:
    """One label per subword position, looked up by the position's word index.

    first:    the first subword of a word gets its label; continuation subwords get -100.
    all:      every subword is labelled; continuation subwords of a B-X word get I-X.
    tutorial: every subword gets the word's label verbatim (B-X repeated), the tutorial's behaviour.
    """
    # The label of a continuation subword, per word: decided once per sentence, not per subword.
    if strategy == "first":
        continuation: Sequence[int] = [IGNORE_INDEX] * len(word_labels)
    elif strategy == "all":
        continuation = [b_to_i.get(label, label) for label in word_labels]
    else:
        continuation = word_labels
    labels: list[int] = []
    append = labels.append
    previous: int | None = None
    for wid in word_ids:
        if wid is None:
            append(IGNORE_INDEX)
        elif wid != previous:
            append(word_labels[wid])
        else:
            append(continuation[wid])
        previous = wid
    return labels
