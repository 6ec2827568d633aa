"""Training really learns: on a synthetic pattern the tiny BERT must reach a high word-level F1,
and `nerflow predict` must print the entities it finds."""

import json

from conftest import prepare, train, write_synthetic_dataset
from nerflow.tasks.evaluate import evaluate_model


def test_tiny_bert_learns_and_predict_prints_entities(tiny_settings, tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "synthetic")
    s = tiny_settings(
        dataset={"source": str(folder), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 6, "learning_rate": 5e-3, "batch_size": 8},
    )
    dataset, tokenized = prepare(s)
    assert dataset.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    run_dir = tmp_path / "run"
    model = train(s, tokenized, run_dir)
    evaluation = evaluate_model(model, tokenized, run_dir)
    assert evaluation.test["f1"] > 0.9, evaluation.test

    from nerflow.flows.cli.main import main

    capsys.readouterr()  # drop what training printed
    assert main(["predict", model.path, "Maria works in Berlin .", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    found = {(e["entity"], e["text"]) for e in result["entities"]}
    assert ("PER", "Maria") in found and ("LOC", "Berlin") in found
