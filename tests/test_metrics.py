import numpy as np
import pytest
from seqeval.metrics import f1_score

from nerflow.tasks.scoring.inference import first_subword_positions
from nerflow.tasks.scoring.metrics import seqeval_scores, subword_level_sequences, word_level_sequences

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# s1 "John Smith(2 pieces) lives in Paris"; s2 "Berlin is big"; s3 truncated after 2 of 3 words.
WORD_IDS = [[None, 0, 1, 1, 2, 3, 4, None], [None, 0, 1, 2, None], [None, 0, 1, None]]
GOLD = [[1, 2, 0, 0, 3], [3, 0, 0], [1, 0, 3]]
PRED = [[0, 1, 2, 0, 0, 0, 3, 0], [0, 1, 0, 0, 0], [0, 1, 0, 0]]


def word_scores(pred_ids, word_ids, n_words):
    """Log-probabilities certain of each subword's predicted label, read at first subwords as
    nerflow.tasks.scoring.inference does (a word without a subword is certain to be O)."""
    scores = np.full((n_words, len(NAMES)), -1e4, dtype=np.float32)
    for w, pos in enumerate(first_subword_positions(word_ids, n_words)):
        scores[w, pred_ids[pos] if pos >= 0 else 0] = 0.0
    return scores


SCORES = [word_scores(p, w, len(g)) for p, w, g in zip(PRED, WORD_IDS, GOLD)]


def test_first_subword_positions_and_lost_words():
    assert first_subword_positions(WORD_IDS[0], 5) == [1, 2, 4, 5, 6]
    assert first_subword_positions(WORD_IDS[2], 3) == [1, 2, -1]  # the third word was cut


def test_word_level_sequences_take_first_subword_and_count_lost_words_as_o():
    for decoding in ("argmax", "iob2"):  # these predictions are valid IOB2: both decodings agree
        y_true, y_pred = word_level_sequences(SCORES, GOLD, NAMES, decoding)
        assert y_true == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-LOC", "O", "O"], ["B-PER", "O", "B-LOC"]]
        assert y_pred == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-PER", "O", "O"], ["B-PER", "O", "O"]]


def test_scores_match_hand_computation():
    s = seqeval_scores(*word_level_sequences(SCORES, GOLD, NAMES, "iob2"))
    # gold entities 5, predicted 4, correct 3 (both of s1, PER of s3)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert s["accuracy"] == pytest.approx(9 / 11)
    assert s["per_entity"]["PER"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert s["per_entity"]["LOC"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})


def test_iob2_decoding_repairs_a_split_entity_that_argmax_scores_twice():
    # "John Smith": B-PER fairly sure, Smith torn between I-PER and B-LOC/I-LOC (argmax: I-LOC).
    scores = np.log(np.array([[0.05, 0.9, 0.02, 0.02, 0.01], [0.05, 0.01, 0.4, 0.09, 0.45]]))
    gold = [[1, 2]]
    argmax = seqeval_scores(*word_level_sequences([scores], gold, NAMES, "argmax"))
    iob2 = seqeval_scores(*word_level_sequences([scores], gold, NAMES, "iob2"))
    assert (argmax["precision"], argmax["recall"]) == (0.0, 0.0)  # B-PER + a stray I-LOC: two wrong spans
    assert (iob2["precision"], iob2["recall"]) == (1.0, 1.0)


def test_subword_level_is_the_tutorials_score_and_differs():
    y_true, y_pred = subword_level_sequences(PRED, WORD_IDS, GOLD, NAMES)
    # s1 at subword level: Smith's two pieces both carry I-PER; the prediction on the second is O.
    assert y_true[0] == ["B-PER", "I-PER", "I-PER", "O", "O", "B-LOC"]
    assert y_pred[0] == ["B-PER", "I-PER", "O", "O", "O", "B-LOC"]
    subword_f1 = seqeval_scores(y_true, y_pred)["f1"]
    assert subword_f1 == pytest.approx(f1_score(y_true, y_pred))
    assert subword_f1 != pytest.approx(seqeval_scores(*word_level_sequences(SCORES, GOLD, NAMES, "iob2"))["f1"])
