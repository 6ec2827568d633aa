"""IOB2-constrained decoding against brute force, and what it changes in a seqeval score."""

import itertools

import numpy as np
import pytest

from nerflow.tasks.scoring.decoding import decode, iob2_constraints, viterbi_iob2

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def valid_iob2(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and not (previous[2:] == tag[2:] and previous[:2] in ("B-", "I-")):
            return False
        previous = tag
    return True


def brute_force(scores: np.ndarray) -> tuple[float, list[int]]:
    best = (-np.inf, [])
    for path in itertools.product(range(len(LABELS)), repeat=len(scores)):
        if valid_iob2([LABELS[i] for i in path]):
            total = float(sum(scores[t, i] for t, i in enumerate(path)))
            best = max(best, (total, list(path)))
    return best


def test_viterbi_finds_the_best_valid_sequence_of_every_sentence():
    rng = np.random.default_rng(0)
    sentences = [
        np.log(rng.dirichlet(np.ones(len(LABELS)) * 0.3, size=n)).astype(np.float32) for n in (1, 2, 3, 4, 5, 0, 3)
    ]
    paths = viterbi_iob2(sentences, LABELS)
    for scores, path in zip(sentences, paths):
        assert len(path) == len(scores)
        if not len(scores):
            continue
        best_score, _ = brute_force(scores)
        assert valid_iob2([LABELS[i] for i in path])
        assert sum(scores[t, i] for t, i in enumerate(path)) == pytest.approx(best_score, abs=1e-4)


def test_a_valid_argmax_is_left_alone_and_an_invalid_one_is_repaired():
    onehot = lambda tags, p=0.9: np.log(  # noqa: E731
        np.array([[p if LABELS[k] == t else (1 - p) / (len(LABELS) - 1) for k in range(len(LABELS))] for t in tags])
    )
    valid = onehot(["B-PER", "I-PER", "O", "B-LOC"])
    assert decode([valid], LABELS, "iob2") == decode([valid], LABELS, "argmax") == [[1, 2, 0, 3]]
    # "Kuala Lumpur": the model is sure of I-LOC on the second word but torn on the first (O vs B-LOC).
    torn = np.log(np.array([[0.5, 0.0, 0.0, 0.45, 0.05], [0.02, 0.02, 0.02, 0.02, 0.92]]) + 1e-9)
    assert decode([torn], LABELS, "argmax") == [[0, 4]]  # O I-LOC: not IOB2
    assert decode([torn], LABELS, "iob2") == [[3, 4]]  # B-LOC I-LOC


def test_constraints_forbid_exactly_the_i_tags_that_do_not_continue_their_type():
    start, transition = iob2_constraints(LABELS)
    assert [s < 0 for s in start] == [False, False, True, False, True]
    allowed = {(LABELS[i], LABELS[j]) for i in range(5) for j in range(5) if transition[i, j] == 0}
    assert ("B-PER", "I-PER") in allowed and ("I-PER", "I-PER") in allowed
    assert ("O", "I-PER") not in allowed and ("B-LOC", "I-PER") not in allowed and ("I-LOC", "I-PER") not in allowed
    assert ("I-PER", "B-LOC") in allowed and ("B-PER", "O") in allowed
