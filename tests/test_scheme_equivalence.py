"""The same 600 training sentences in IOB2, IOB1, BIOES and BILOU train to the same word-level F1
(each scheme is converted span for span to IOB2 before training), and in IO they train too. Measured, not assumed: five real
trainings of the tiny BERT, each in its own output folder (no shared cache), scored on the same 200
test sentences; a model trained from BIOES writes BIOES back."""

from __future__ import annotations

import pytest
from seqeval.metrics import f1_score

from conftest import prepare, tiny_run_settings, train
from nerflow.tasks.data.schemes import convert
from nerflow.tasks.evaluate import evaluate_model
from shapes import sample, write_jsonl

pytestmark = pytest.mark.slow  # five trainings

SIZES = {"train": 600, "validation": 200, "test": 200}


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    results = {}
    for scheme in ("iob2", "iob1", "bioes", "bilou", "io"):
        root = tmp_path_factory.mktemp(scheme)
        settings = tiny_run_settings(
            tiny_bert, root / "runs",
            dataset={"source": str(write_jsonl(root / "data", scheme, SIZES)), "max_train_samples": None, "max_eval_samples": None},
            train={"epochs": 3, "batch_size": 16, "learning_rate": 5e-3, "seed": 3},
        )  # fmt: skip
        dataset, tokenized = prepare(settings)
        model = train(settings, tokenized, root / "run")
        results[scheme] = (dataset, model, evaluate_model(model, tokenized, root / "run"))
    return results


def test_every_scheme_trains_to_the_iob2_f1(trained):
    f1 = {scheme: evaluation.test["f1"] for scheme, (_, _, evaluation) in trained.items()}
    assert f1["iob2"] > 0.2, f1  # it learned something: the comparison means something
    for scheme in ("iob1", "bioes", "bilou"):  # lossless: the very same training data
        assert trained[scheme][0].tag_scheme == scheme
        assert f1[scheme] == pytest.approx(f1["iob2"], abs=1e-9), f1
    # IO is lossy (adjacent entities of one type merge), so its training data differ and so does the
    # trajectory: at the tiny model's F1 that is noise of several points between runs. It must learn as
    # IOB2 does; what the scheme itself costs is counted exactly on the gold test tags.
    assert f1["io"] > 0.2, f1
    gold = [tags for _, tags in sample("test", SIZES["test"])]
    through_io = [convert(convert(tags, "iob2", "io"), "io", "iob2") for tags in gold]
    assert f1_score(gold, through_io) >= 0.97


def test_a_model_trained_from_bioes_writes_bioes_back(trained, tmp_path):
    from nerflow.tasks.prediction.files import predict_file

    model = trained["bioes"][1]
    (tmp_path / "words.jsonl").write_text(
        "".join(f'{{"tokens": {__import__("json").dumps(w)}}}\n' for w, _ in sample("test", 50))
    )
    summary = predict_file(model.path, tmp_path / "words.jsonl", tmp_path / "out.conll")
    tags = {line.split("\t")[1] for line in (tmp_path / "out.conll").read_text().splitlines() if line}
    assert summary["tag_scheme"] == "bioes" and tags & {"S-PER", "S-LOC", "S-ORG", "E-PER", "E-LOC", "E-ORG"}
    assert not {t for t in tags if t.startswith("I-")} - {"I-PER", "I-LOC", "I-ORG"}
