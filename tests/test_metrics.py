import pytest
from seqeval.metrics import f1_score

from tasks.metrics import seqeval_scores, subword_level_sequences, word_level_sequences

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# s1 "John Smith(2 pieces) lives in Paris"; s2 "Berlin is big"; s3 truncated after 2 of 3 words.
WORD_IDS = [[None, 0, 1, 1, 2, 3, 4, None], [None, 0, 1, 2, None], [None, 0, 1, None]]
GOLD = [[1, 2, 0, 0, 3], [3, 0, 0], [1, 0, 3]]
PRED = [[0, 1, 2, 0, 0, 0, 3, 0], [0, 1, 0, 0, 0], [0, 1, 0, 0]]


def test_word_level_sequences_take_first_subword_and_count_lost_words_as_o():
    y_true, y_pred = word_level_sequences(PRED, WORD_IDS, GOLD, NAMES)
    assert y_true == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-LOC", "O", "O"], ["B-PER", "O", "B-LOC"]]
    assert y_pred == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-PER", "O", "O"], ["B-PER", "O", "O"]]


def test_scores_match_hand_computation():
    s = seqeval_scores(*word_level_sequences(PRED, WORD_IDS, GOLD, NAMES))
    # gold entities 5, predicted 4, correct 3 (both of s1, PER of s3)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert s["accuracy"] == pytest.approx(9 / 11)
    assert s["per_entity"]["PER"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert s["per_entity"]["LOC"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})


def test_subword_level_is_the_tutorials_score_and_differs():
    y_true, y_pred = subword_level_sequences(PRED, WORD_IDS, GOLD, NAMES)
    # s1 at subword level: Smith's two pieces both carry I-PER; the prediction on the second is O.
    assert y_true[0] == ["B-PER", "I-PER", "I-PER", "O", "O", "B-LOC"]
    assert y_pred[0] == ["B-PER", "I-PER", "O", "O", "O", "B-LOC"]
    subword_f1 = seqeval_scores(y_true, y_pred)["f1"]
    assert subword_f1 == pytest.approx(f1_score(y_true, y_pred))
    assert subword_f1 != pytest.approx(seqeval_scores(*word_level_sequences(PRED, WORD_IDS, GOLD, NAMES))["f1"])
