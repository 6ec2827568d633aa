"""Word tags from the model's per-word label scores.

The model scores each word (at its first subword) independently, so the most likely tag per word
(`argmax`, what transformers' token-classification pipeline does) can produce sequences that are not
valid IOB2: `I-ORG` after `O` or after `B-LOC`. seqeval then opens a span at every such tag, so one
entity split in two costs a false positive and a false negative. `iob2` decoding picks the most likely
sequence of tags that *is* valid IOB2 (Viterbi over the per-word log-probabilities, where `I-X` may
only follow `B-X` or `I-X`): the same model, scored on the same words, with spans it can stand behind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_FORBIDDEN = -1e9  # a finite "impossible": keeps the arithmetic free of inf - inf


def iob2_constraints(label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start, transition) penalties: 0 where allowed, -1e9 where IOB2 forbids the tag there."""
    k = len(label_names)
    start = np.zeros(k, dtype=np.float32)
    transition = np.zeros((k, k), dtype=np.float32)
    for j, tag in enumerate(label_names):
        if not tag.startswith("I-"):
            continue
        start[j] = _FORBIDDEN
        for i, previous in enumerate(label_names):
            if previous[2:] != tag[2:] or previous[:2] not in ("B-", "I-"):
                transition[i, j] = _FORBIDDEN
    return start, transition


CHUNK = 512  # sentences decoded together; sorted by length, so a chunk's width is its longest sentence


def viterbi_iob2(word_scores: Sequence[np.ndarray], label_names: Sequence[str]) -> list[list[int]]:
    """The best valid IOB2 tag sequence of every sentence; word_scores[i] is (words, labels) log-probs.

    Sentences of similar length advance together one word position at a time (numpy over a chunk), so
    decoding 10,000 sentences costs a few hundred array operations, not a Python loop per word and tag."""
    order = sorted(range(len(word_scores)), key=lambda i: len(word_scores[i]))
    paths: list[list[int]] = [[] for _ in word_scores]
    for first in range(0, len(order), CHUNK):
        chunk = order[first : first + CHUNK]
        for i, path in zip(chunk, _viterbi_chunk([word_scores[i] for i in chunk], label_names)):
            paths[i] = path
    return paths


def _viterbi_chunk(word_scores: Sequence[np.ndarray], label_names: Sequence[str]) -> list[list[int]]:
    lengths = np.array([len(s) for s in word_scores], dtype=np.int64)
    n, width, k = len(word_scores), int(lengths.max(initial=0)), len(label_names)
    if width == 0:
        return [[] for _ in range(n)]
    start, transition = iob2_constraints(label_names)
    scores = np.zeros((n, width, k), dtype=np.float32)
    for i, s in enumerate(word_scores):
        scores[i, : len(s)] = s
    best = scores[:, 0] + start
    back = np.zeros((n, width, k), dtype=np.int32)
    for t in range(1, width):
        candidates = best[:, :, None] + transition[None]  # (sentence, previous tag, tag)
        back[:, t] = candidates.argmax(axis=1)
        step = np.take_along_axis(candidates, back[:, t][:, None, :], axis=1)[:, 0] + scores[:, t]
        best = np.where((t < lengths)[:, None], step, best)  # finished sentences keep their score
    # Back-track all sentences together: a sentence's tag at t-1 is back[t] of its tag at t, from its end.
    rows, cur = np.arange(n), best.argmax(axis=1)
    path = np.zeros((n, width), dtype=np.int64)
    for t in range(width - 1, -1, -1):
        path[:, t] = cur
        if t > 0:
            cur = np.where(t < lengths, back[rows, t, cur], cur)
    return [path[i, :length].tolist() for i, length in enumerate(lengths)]


def decode(word_scores: Sequence[np.ndarray], label_names: Sequence[str], decoding: str) -> list[list[int]]:
    """Tag ids per word of every sentence; decoding is 'iob2' or 'argmax' (settings: evaluation.decoding)."""
    if decoding == "iob2":
        return viterbi_iob2(word_scores, label_names)
    return [[int(i) for i in np.asarray(s).argmax(axis=-1)] if len(s) else [] for s in word_scores]
