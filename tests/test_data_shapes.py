"""Data as it ships: tagging schemes and file shapes, read from files generated from the bundled
sample (tests/shapes.py), converted span for span, and read the same way by training and prediction."""

from __future__ import annotations

import pytest

from nerflow.tasks.data.schemes import convert, detect_scheme, spans
from nerflow.tasks.ingest import ingest_dataset
from nerflow.tasks.runtime.errors import DatasetValidationError
from nerflow.tasks.settings import DatasetSettings
from shapes import (
    LABELS,
    has_adjacent_same_type,
    in_scheme,
    sample,
    write_conll2003,
    write_jsonl,
    write_tsv_blocks_with_header,
    write_tsv_table,
)

N = {"train": 300, "validation": 100, "test": 100}


def ingested(folder, tmp_path, **cfg):
    ref = ingest_dataset(DatasetSettings(source=str(folder), **cfg), tmp_path / "cache")
    data = ref.load()
    return ref, {role: [[ref.label_names[t] for t in tags] for tags in data[role]["ner_tags"]] for role in N}


def iob2_of(split: str, n: int) -> list[list[str]]:
    return [in_scheme(tags, "iob2") for _, tags in sample(split, n)]


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes", "bilou", "io"])
def test_each_scheme_is_found_and_converted_to_the_same_iob2_spans(tmp_path, scheme):
    ref, tags = ingested(write_jsonl(tmp_path / scheme, scheme, N), tmp_path)
    assert ref.tag_scheme == scheme
    assert ref.profile[0]["tag_scheme"] == scheme
    assert set(ref.label_names) == set(LABELS)  # training sees IOB2 whatever the file said
    for role, n in N.items():
        expected = iob2_of(role, n)
        for got, want in zip(tags[role], expected):
            if scheme == "io" and has_adjacent_same_type(want):
                continue  # IO cannot tell two adjacent entities of one type from one
            assert got == want
    marks = {"iob1": "I-", "bioes": "S-", "bilou": "U-", "io": "PER"}  # a tag only that scheme writes so
    if scheme != "iob2":
        assert any(n.startswith(marks[scheme]) for n in ref.source_label_names)


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes", "bilou", "io"])
def test_predictions_written_back_reproduce_the_source_tags(scheme):
    for _, tags in sample("test", 300):
        source = in_scheme(tags, scheme)
        back = convert(convert(source, scheme, "iob2"), "iob2", scheme)
        assert back == source
        assert spans(source, scheme) == spans(in_scheme(tags, "iob2"), "iob2")


def test_conll2003_as_released_four_columns_docstart_iob1(tmp_path):
    folder = write_conll2003(tmp_path / "conll2003", "iob1", N)  # train.txt, valid.txt, test.txt
    assert (folder / "train.txt").read_text().startswith("-DOCSTART- -X- -X- O\n\n")
    ref, tags = ingested(folder, tmp_path)
    assert ref.tag_scheme == "iob1" and ref.num_rows == N and ref.iob_violations == dict.fromkeys(N, 0)
    assert tags["train"] == iob2_of("train", 300)
    assert ref.name == "conll2003"


def test_a_tsv_is_read_by_its_shape_and_a_header_can_name_the_columns(tmp_path):
    blocks, _ = ingested(write_tsv_blocks_with_header(tmp_path / "blocks", N), tmp_path)
    table, _ = ingested(write_tsv_table(tmp_path / "table", N), tmp_path)
    iob = write_conll2003(tmp_path / "iob", "iob2", N, ext=".iob", names=("train", "validation", "test"))
    conll, _ = ingested(iob, tmp_path)
    jsonl, _ = ingested(write_jsonl(tmp_path / "jsonl", "iob2", N), tmp_path)
    assert blocks.fingerprint == table.fingerprint == conll.fingerprint == jsonl.fingerprint  # the same sentences


def test_prediction_reads_files_as_training_does(tmp_path):
    from nerflow.tasks.prediction.files import read_documents

    folder = write_conll2003(tmp_path / "c", "iob1", {"train": 5, "validation": 5, "test": 20})
    docs, _, gold = read_documents(folder / "test.txt")  # a .txt of word-per-line blocks is CoNLL, not text
    assert [d.words for d in docs] == [w for w, _ in sample("test", 20)]
    assert gold == [in_scheme(t, "iob1") for _, t in sample("test", 20)]
    text = tmp_path / "plain.txt"
    text.write_text("Angela Merkel visited Paris .\nNothing here .\n")
    docs, _, gold = read_documents(text)
    assert [d.text for d in docs] == ["Angela Merkel visited Paris .", "Nothing here ."] and gold == [None, None]
    table = write_tsv_table(tmp_path / "t", {"train": 1, "validation": 1, "test": 7})
    docs, _, gold = read_documents(table / "test.tsv")
    assert [d.words for d in docs] == [w for w, _ in sample("test", 7)] and gold[0] == sample("test", 1)[0][1]


@pytest.mark.parametrize(
    "tags, why",
    [
        ([["PER", "B-LOC", "O"]], "mix bare types (PER) with prefixed tags (B-LOC)"),
        ([["B-PER", "E-PER", "U-LOC"]], "use both E-/S- (BIOES) and L-/U- (BILOU) prefixes"),
        (
            [["I-PER", "O", "B-LOC"]] * 3 + [["O", "I-ORG"]] * 3 + [["O", "B-ORG"]],
            "mix IOB1 span starts (18 I- tags after O or another type) with IOB2 span starts (12 B- tags after O)",
        ),
    ],
)
def test_tags_that_fit_no_scheme_or_two_get_one_line_saying_how_to_choose(tmp_path, tags, why):
    import json

    folder = tmp_path / "odd"
    folder.mkdir()
    for split in N:
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"tokens": ["w"] * len(t), "ner_tags": t}) + "\n" for t in tags)
        )
    with pytest.raises(DatasetValidationError) as err:
        ingested(folder, tmp_path)
    message = str(err.value)
    assert why in message and len(message.splitlines()) == 1 and "dataset.tag_scheme" in message


def test_a_declared_scheme_must_fit_and_decides_an_ambiguous_case(tmp_path):
    folder = write_jsonl(tmp_path / "bioes", "bioes", N)
    with pytest.raises(DatasetValidationError, match="dataset.tag_scheme=iob2 does not fit the tags .*E-"):
        ingested(folder, tmp_path, tag_scheme="iob2")
    ref, _ = ingested(folder, tmp_path, tag_scheme="iobes")
    assert ref.tag_scheme == "bioes"
    # IOB1 without a single B- is indistinguishable from IO with I- prefixes: both read the same spans.
    assert detect_scheme(["O", "I-PER"], [["I-PER", "I-PER", "O"]]).scheme == "iob1"


def test_bioes_tags_are_not_refused_as_unknown_and_labels_txt_must_agree(tmp_path):
    folder = write_jsonl(tmp_path / "agree", "iob2", N)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    other_order = [LABELS[0], *reversed(LABELS[1:])]
    with pytest.raises(DatasetValidationError, match="dataset.label_names .* contradicts .*labels.txt"):
        ingested(folder, tmp_path, label_names=other_order)
    ref, _ = ingested(folder, tmp_path, label_names=LABELS)
    assert ref.label_names == LABELS
