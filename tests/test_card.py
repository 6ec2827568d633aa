from pathlib import Path

import pytest

from nerflow.tasks.card import WIDGET_EXAMPLES, check_card, render_model_card
from nerflow.tasks.refs import DatasetRef, EvaluationRef, ModelRef, TokenizedRef
from nerflow.tasks.settings import RunSettings

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def scores(f1: float) -> dict:
    entity = {"precision": f1, "recall": f1, "f1": f1, "support": 10}
    return {
        "precision": f1 + 0.01,
        "recall": f1 - 0.01,
        "f1": f1,
        "accuracy": 0.9,
        "support": 30,
        "sentences": 100,
        "per_entity": {"PER": entity, "ORG": entity, "LOC": entity},
    }


def refs(
    tmp_path: Path,
    language: str | None,
    source: str = "unimelb-nlp/wikiann",
    config: str | None = "bn",
    **dataset_fields,
):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "train_log.json").write_text(
        '[{"loss": 1.2, "epoch": 0.5}, {"loss": 0.6, "epoch": 1.0}, {"eval_loss": 0.5, "eval_f1": 0.7, "epoch": 1.0},'
        ' {"loss": 0.4, "epoch": 2.0}, {"eval_loss": 0.45, "eval_f1": 0.81, "epoch": 2.0}]'
    )
    model = ModelRef(
        path=str(model_dir),
        run_dir=str(tmp_path),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        resumed_from=None,
        best_checkpoint="checkpoint-7",
        best_validation_f1=0.81,
        device="cuda",
        precision="bf16",
        train_runtime_s=30.0,
        train_samples_per_second=2300.0,
        epochs=[
            {"epoch": 1.0, "train_loss": 0.5, "eval_loss": 0.4, "val_precision": 0.8, "val_recall": 0.8, "val_f1": 0.81}
        ],
    )
    evaluation = EvaluationRef(
        path=str(tmp_path / "metrics.json"),
        word_level={"validation": scores(0.81), "test": scores(0.8234567)},
        subword_level_tutorial_f1={"validation": 0.7, "test": 0.69},
        test_confusion={
            "labels": ["O", "LOC", "ORG", "PER"],
            "matrix": [[90, 2, 3, 1], [4, 20, 1, 0], [5, 2, 15, 1], [1, 0, 0, 25]],
        },
    )
    dataset = DatasetRef(
        path=str(tmp_path / "ds"),
        fingerprint="f" * 64,
        source=source,
        config=config,
        revision="abc123",
        source_revision="abc123",
        label_names=LABELS,
        num_rows={"train": 10000, "validation": 1000, "test": 1000},
        iob_violations={"train": 0, "validation": 0, "test": 0},
        language=language,
        profile=[],
        split_names={"train": "train", "validation": "validation", "test": "test"},
    ).model_copy(update=dataset_fields)
    tokenized = TokenizedRef(
        path=str(tmp_path / "tok"),
        cache_key="k",
        dataset_fingerprint="f" * 64,
        base_model="bert-base-multilingual-cased",
        tokenizer_fingerprint="t",
        alignment="first",
        max_length=512,
        label_names=LABELS,
        stats={},
        roundtrip={},
        warnings=["validation: 3 of 1000 sentences lost words to max_length truncation"],
    )
    return model, evaluation, dataset, tokenized


def test_bengali_card_metadata_and_content(tmp_path):
    from huggingface_hub import ModelCard

    model, evaluation, dataset, tokenized = refs(tmp_path, "bn")
    ref = render_model_card(model, evaluation, dataset, tokenized, RunSettings(), "run-1")
    card = ModelCard.load(ref.path)
    data = card.data.to_dict()
    assert data["language"] == ["bn"] and data["license"] == "apache-2.0"
    assert data["base_model"] == "bert-base-multilingual-cased"
    assert data["datasets"] == ["unimelb-nlp/wikiann"]
    assert data["pipeline_tag"] == "token-classification"
    assert [w["text"] for w in data["widget"]] == WIDGET_EXAMPLES["bn"] == ref.widget_examples
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["f1"].metric_value == pytest.approx(0.8235)
    assert results["f1"].dataset_config == "bn" and results["f1"].dataset_revision == "abc123"
    assert results["f1"].dataset_split == "test"
    assert set(results) == {"f1", "precision", "recall", "accuracy"}
    text = card.text
    assert "| PER |" in text and "`B-PER`" in text
    assert "learning rate 2e-05".lower() in text.lower() and "epochs 7" in text
    assert "0.6900" in text and "comparison only" in text  # the tutorial's score, labelled
    assert "lost words to max_length truncation" in text
    assert check_card(Path(ref.path)) == []
    # Pictures: saved beside the card as real PNG files and shown by it.
    assert ref.images == ["confusion_matrix.png", "training_curves.png"]
    for image in ref.images:
        assert (Path(ref.path).parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({image})" in text


def test_widget_examples_configurable_and_card_checked(tmp_path):
    model, evaluation, dataset, tokenized = refs(tmp_path, "de", source="/data/local", config=None)
    settings = RunSettings.model_validate({"card": {"widget_examples": ["Angela Merkel besuchte Paris ."]}})
    ref = render_model_card(model, evaluation, dataset, tokenized, settings, "run-2")
    from huggingface_hub import ModelCard

    data = ModelCard.load(ref.path).data.to_dict()
    assert [w["text"] for w in data["widget"]] == ["Angela Merkel besuchte Paris ."]
    assert "datasets" not in data  # a local folder is not a Hub dataset id

    broken = Path(ref.path).read_text().replace("widget:", "widgets:").replace("- type: f1", "- type: f2")
    Path(ref.path).write_text(broken)
    problems = check_card(Path(ref.path))
    assert "widget: no examples with text" in problems
    assert "model-index: no token-classification f1 result" in problems


def test_a_local_dataset_is_named_never_shown_as_a_path(tmp_path):
    from huggingface_hub import ModelCard

    folder = tmp_path / "corpora" / "my-ner-data"
    model, evaluation, dataset, tokenized = refs(
        tmp_path,
        "en",
        source=str(folder),
        config=None,
        name="my-ner-data",
        revision="sha256:ffffffffffffffff",
        source_revision=None,
        tag_scheme="bioes",
        source_label_names=["O", "B-PER", "I-PER", "E-PER", "S-PER"],
    )
    ref = render_model_card(model, evaluation, dataset, tokenized, RunSettings(), "run-3")
    text = Path(ref.path).read_text()
    assert str(tmp_path) not in text and "corpora" not in text
    (result, *_) = ModelCard.load(ref.path).data.eval_results
    assert result.dataset_name == "my-ner-data" and result.dataset_type == "local" and result.dataset_revision is None
    assert "Revision" not in text and text.count("ffffffffffffffff") == 1  # the fingerprint, once, called that
    assert "The dataset's tags are BIOES" in text and "`S-PER`" in text
