"""The evaluate step's plain function on a trained tiny model: what metrics.json holds, and that each
number is what the shared scoring code computes from the model's predictions."""

import json
from pathlib import Path

import pytest

from conftest import prepare, train
from nerflow.tasks.evaluate import evaluate_model, predict_splits
from nerflow.tasks.scoring.decoding import decode
from nerflow.tasks.scoring.metrics import seqeval_scores, word_level_sequences


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """A tiny model trained one epoch on 64 sample sentences: good enough to make mistakes."""
    from conftest import tiny_run_settings

    root = tmp_path_factory.mktemp("evaluate")
    settings = tiny_run_settings(tiny_bert, root / "runs", train={"epochs": 1})
    _, tokenized = prepare(settings)
    return train(settings, tokenized, root / "runs" / "one"), tokenized


def test_metrics_file_holds_every_score_the_step_returns(trained, tmp_path):
    model, tokenized = trained
    ev = evaluate_model(model, tokenized, tmp_path, batch_size=8, decoding="iob2")
    saved = json.loads(Path(ev.path).read_text())
    assert Path(ev.path) == tmp_path / "metrics.json"
    assert saved["word_level"] == ev.word_level and saved["word_level_argmax"] == ev.word_level_argmax
    assert saved["decoding"] == ev.decoding == "iob2" and saved["alignment"] == "first"
    assert set(ev.word_level) == {"validation", "test"} and ev.test["sentences"] == 32
    assert set(ev.test["per_entity"]) <= {"PER", "ORG", "LOC"}
    confusion = ev.test_confusion
    assert confusion["labels"][0] == "O" and sum(map(sum, confusion["matrix"])) == sum(
        len(w) for w in tokenized.load()["test"]["word_labels"]
    )  # one cell count per test word


def test_scores_are_the_decoded_predictions_scored_by_seqeval(trained, tmp_path):
    model, tokenized = trained
    data = tokenized.load()
    predictions = predict_splits(model.path, data, 8, tokenized.label_names)["test"]
    gold = list(data["test"]["word_labels"])
    iob2 = evaluate_model(model, tokenized, tmp_path / "iob2", 8, "iob2")
    argmax = evaluate_model(model, tokenized, tmp_path / "argmax", 8, "argmax")
    for decoding, ev in (("iob2", iob2), ("argmax", argmax)):
        expected = seqeval_scores(*word_level_sequences(predictions.word_scores, gold, tokenized.label_names, decoding))
        assert ev.test["f1"] == pytest.approx(expected["f1"]) and ev.test["precision"] == pytest.approx(
            expected["precision"]
        )
    # Either way, both decodings are reported: the argmax run's headline is the IOB2 run's comparison.
    assert iob2.word_level_argmax["test"]["f1"] == pytest.approx(argmax.test["f1"])
    # IOB2 decoding only ever outputs valid sequences.
    names = tokenized.label_names
    for tags in decode(predictions.word_scores, names, "iob2"):
        assert all(
            not names[t].startswith("I-") or (i and names[tags[i - 1]][2:] == names[t][2:]) for i, t in enumerate(tags)
        )
