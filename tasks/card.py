"""model card: the Hugging Face `README.md` inside the model folder.

Built with huggingface_hub's ModelCard/ModelCardData so the metadata (language, license, base model,
datasets, widget, model-index with the word-level test scores) is what the Hub expects; `check_card`
loads it back and checks it without a network.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.logging import get_run_logger

from nerflow.tasks.refs import CardRef, DatasetRef, EvaluationRef, ModelRef, TokenizedRef
from nerflow.tasks.reporting.plots import CONFUSION_MATRIX, TRAINING_CURVES, confusion_png, training_curves_png
from nerflow.tasks.runtime.caching import JSON_RESULTS, fingerprint, model_identity
from nerflow.tasks.runtime.files import atomic_write_text
from nerflow.tasks.scoring.metrics import DECODING_NOTE, SUBWORD_NOTE, WORD_LEVEL_NOTE, per_entity_table
from nerflow.tasks.settings import RunSettings

# The five widget examples of the tutorial's Bengali model card.
WIDGET_EXAMPLES: dict[str, list[str]] = {
    "bn": [
        "মারভিন দি মারসিয়ান",
        "লিওনার্দো দা ভিঞ্চি",
        "বসনিয়া ও হার্জেগোভিনা",
        "সাউথ ইস্ট ইউনিভার্সিটি",
        "মানিক বন্দ্যোপাধ্যায় লেখক",
    ],
    "en": [
        "Ada Lovelace worked with Charles Babbage in London .",
        "The University of Oxford is in England .",
        "Angela Merkel visited the United Nations in New York .",
        "Lake Victoria borders Uganda , Kenya and Tanzania .",
        "Toyota opened a factory in Kentucky .",
    ],
}
N_FALLBACK_EXAMPLES = 5

CARD_TEMPLATE = (Path(__file__).parent / "reporting" / "model_card.jinja").read_text(encoding="utf-8")

ALIGNMENT_TEXT = {
    "first": "the first subword of each word carries its label; the others are ignored by the loss",
    "all": "every subword is labelled; continuation pieces of a B- word get I-",
    "tutorial": "every subword gets its word's tag with B- copied, the tutorial's behaviour",
}


def widget_examples(settings: RunSettings, dataset: DatasetRef) -> list[str]:
    if settings.card.widget_examples:
        return list(settings.card.widget_examples)
    if dataset.language in WIDGET_EXAMPLES:
        return WIDGET_EXAMPLES[dataset.language]
    test = dataset.load()["test"]
    return [" ".join(tokens) for tokens in test.select(range(min(N_FALLBACK_EXAMPLES, len(test))))["tokens"]]


def _hub_id(name: str) -> str | None:
    """A Hub id looks like 'name' or 'owner/name' and is not a local or remote path."""
    if name.startswith(("package:", "s3://", "/", ".", "~")) or Path(name).exists() or name.count("/") > 1:
        return None
    return name


def _base_model(settings: RunSettings) -> str | None:
    return settings.base_model.hub_id or _hub_id(settings.base_model.name)


def _dataset_name(dataset: DatasetRef) -> str:
    """The name a user gave the dataset (dataset.name), its Hub id, or its folder's name: never a path."""
    name = dataset.name or dataset.source.rstrip("/").rsplit("/", 1)[-1]
    return f"{name} ({dataset.config})" if dataset.config else name


SCHEME_TEXT = {
    "iob1": "IOB1 (B- only between adjacent entities, as CoNLL-2003 is released)",
    "bioes": "BIOES (E- ends, S- is a one-word entity)",
    "bilou": "BILOU (L- ends, U- is a one-word entity)",
    "io": "IO (bare entity types)",
}


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("transformers", "torch", "datasets", "tokenizers", "seqeval", "prefect"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def card_metadata(evaluation: EvaluationRef, dataset: DatasetRef, settings: RunSettings, examples: list[str]):
    """The card's YAML header: what the Hub indexes (language, license, base model, datasets, widget,
    model-index with the word-level test scores)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = _hub_id(dataset.source)
    eval_results = [
        EvalResult(
            task_type="token-classification",
            task_name="Named Entity Recognition",
            dataset_type=dataset_id or "local",
            dataset_name=_dataset_name(dataset),
            dataset_config=dataset.config,
            dataset_split=dataset.split_names["test"],
            dataset_revision=dataset.source_revision,
            metric_type=metric,
            metric_name=f"{metric.capitalize()} (word level, seqeval)",
            metric_value=round(float(evaluation.test[metric]), 4),
        )
        for metric in ("f1", "precision", "recall", "accuracy")
    ]
    return ModelCardData(
        model_name=settings.resolved_model_name(),
        language=[dataset.language] if dataset.language else None,
        license=settings.card.license,
        library_name="transformers",
        pipeline_tag="token-classification",
        tags=["token-classification", "ner", "nerflow"] + (["wikiann"] if "wikiann" in dataset.source else []),
        datasets=[dataset_id] if dataset_id else None,
        base_model=_base_model(settings),
        metrics=["precision", "recall", "f1", "accuracy"],
        eval_results=eval_results,
        widget=[{"text": text, "example_title": f"Sentence_{i}"} for i, text in enumerate(examples, start=1)],
    )


def template_context(
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    settings: RunSettings,
    run_name: str,
    examples: list[str],
    images: dict[str, str],
) -> dict[str, Any]:
    """What the card's body (model_card.jinja) shows."""
    base_model, dataset_id, hparams = _base_model(settings), _hub_id(dataset.source), settings.train
    return {
        "model_name": settings.resolved_model_name(),
        "base_model_link": f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"`{settings.base_model.name}`",
        "dataset_link": f"[{_dataset_name(dataset)}](https://huggingface.co/datasets/{dataset_id})"
        if dataset_id
        else f"`{_dataset_name(dataset)}`",
        "dataset_name": _dataset_name(dataset),
        "source_scheme": SCHEME_TEXT.get(dataset.tag_scheme),
        "source_label_names": dataset.source_label_names,
        "test": evaluation.test,
        "word_level": evaluation.word_level,
        "per_entity": per_entity_table(evaluation),
        "subword_f1": evaluation.subword_level_tutorial_f1,
        "word_level_note": WORD_LEVEL_NOTE,
        "decoding_note": DECODING_NOTE[evaluation.decoding],
        "decoding": evaluation.decoding,
        "argmax_f1": evaluation.word_level_argmax.get("test", {}).get("f1"),
        "subword_note": SUBWORD_NOTE,
        "warmup": f"{hparams.warmup_steps} steps"
        if hparams.warmup_steps is not None
        else f"{hparams.warmup_ratio:.0%} of the steps",
        "label_names": dataset.label_names,
        "entity_types": sorted({n[2:] for n in dataset.label_names if n != "O"}),
        "dataset": dataset,
        "alignment": tokenized.alignment,
        "alignment_text": ALIGNMENT_TEXT[tokenized.alignment],
        "max_length": tokenized.max_length,
        "warnings": tokenized.warnings,
        "train": hparams,
        "model": model,
        "epochs": model.epochs,
        "widget": examples,
        "usage_id": settings.publish.hub_repo_id or "path/to/model",
        "language_name": dataset.language or "the training data's language",
        "versions": _versions(),
        "run_name": run_name,
        "curves_image": images.get("curves"),
        "confusion_image": images.get("confusion"),
        "onnx": _onnx_parity(model),
        "schemas": evaluation.test_schemas,
        "error_classes": evaluation.test_error_classes,
        "label_issues": _label_issue_count(model),
    }


def _label_issue_count(model: ModelRef) -> int | None:
    """How many training sentences the run's label-issue finder flagged (None: it did not run)."""
    from nerflow.tasks.analysis.label_issues import ISSUES_FILE

    path = Path(model.run_dir) / ISSUES_FILE
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else None


def _onnx_parity(model: ModelRef) -> dict[str, Any] | None:
    """The ONNX export's parity report, when the model folder holds a complete export."""
    from nerflow.tasks.exporting.onnx import ONNX_DIR, PARITY_FILE
    from nerflow.tasks.runtime.files import is_sealed

    folder = Path(model.path) / ONNX_DIR
    return json.loads((folder / PARITY_FILE).read_text()) if is_sealed(folder) else None


def build_card(
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    settings: RunSettings,
    run_name: str,
    images: dict[str, str] | None = None,
):
    from huggingface_hub import ModelCard

    examples = widget_examples(settings, dataset)
    context = template_context(model, evaluation, dataset, tokenized, settings, run_name, examples, images or {})
    return ModelCard.from_template(
        card_metadata(evaluation, dataset, settings, examples), template_str=CARD_TEMPLATE, **context
    )


def check_card(path: Path) -> list[str]:
    """Load the card back and check the metadata the Hub needs; returns the problems found."""
    from huggingface_hub import ModelCard

    problems = []
    card = ModelCard.load(path)
    data = card.data
    if not data.eval_results:
        problems.append("model-index: no evaluation results")
    elif not any(r.metric_type == "f1" and r.task_type == "token-classification" for r in data.eval_results):
        problems.append("model-index: no token-classification f1 result")
    for field in ("license", "pipeline_tag", "model_name"):
        if not getattr(data, field, None):
            problems.append(f"{field}: missing")
    widget = data.to_dict().get("widget") or []
    if not widget or not all(isinstance(w, dict) and w.get("text") for w in widget):
        problems.append("widget: no examples with text")
    return problems


def draw_pictures(model: ModelRef, evaluation: EvaluationRef) -> dict[str, str]:
    """Training curves and the test confusion matrix as PNG files in the model folder.

    A model reused from an earlier run brought its pictures along: they were drawn from the same
    training log and the same (cached) evaluation, so they are kept instead of drawn again."""
    model_dir = Path(model.path)
    log_path = Path(model.run_dir) / "train_log.json"
    wanted = {}
    if log_path.is_file():
        wanted["curves"] = TRAINING_CURVES
    if evaluation.test_confusion.get("matrix"):
        wanted["confusion"] = CONFUSION_MATRIX
    if model.reused_from and all((model_dir / name).is_file() for name in wanted.values()):
        return wanted
    if "curves" in wanted:
        training_curves_png(json.loads(log_path.read_text(encoding="utf-8")), model_dir / TRAINING_CURVES)
    if "confusion" in wanted:
        confusion_png(
            evaluation.test_confusion["labels"],
            evaluation.test_confusion["matrix"],
            model_dir / CONFUSION_MATRIX,
            "Test words: gold vs predicted entity type",
        )
    return wanted


def render_model_card(
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    settings: RunSettings,
    run_name: str,
) -> CardRef:
    images = draw_pictures(model, evaluation)
    card = build_card(model, evaluation, dataset, tokenized, settings, run_name, images)
    path = atomic_write_text(Path(model.path) / "README.md", str(card))
    problems = check_card(path)
    if problems:
        raise ValueError(f"model card {path} is invalid: " + "; ".join(problems))
    widget = [w["text"] for w in card.data.to_dict()["widget"]]
    return CardRef(path=str(path), widget_examples=widget, images=sorted(images.values()))


def widget_predictions(model_dir: str, examples: list[str]) -> list[dict[str, Any]]:
    """Entities the model finds in each widget example, for the run summary."""
    from nerflow.tasks.prediction.tagger import NerPredictor

    found = NerPredictor(model_dir, backend="torch").predict(examples)
    return [{"text": text, "entities": entities} for text, entities in zip(examples, found)]


def _widget_cache_key(context, inputs: dict[str, Any]) -> str:
    # The model's files, not its folder: a reused model hard-linked or copied into a new run keeps
    # size and modification time, so its predictions come from the cache without loading it.
    return "widget-" + fingerprint("nerflow-widget-v2", model_identity(inputs["model"].path), inputs["examples"])


@task(name="model-card", cache_policy=NO_CACHE)
def model_card_task(
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    settings: RunSettings,
    run_name: str,
) -> CardRef:
    ref = render_model_card(model, evaluation, dataset, tokenized, settings, run_name)
    get_run_logger().info("model card written to %s (with %s)", ref.path, ", ".join(ref.images) or "no pictures")
    if ref.images:
        create_markdown_artifact(key="model-pictures", markdown=pictures_markdown(Path(model.path), ref.images))
    return ref


PICTURE_TITLES = {
    TRAINING_CURVES: "Training loss and validation F1 per epoch",
    CONFUSION_MATRIX: "Test words: gold vs predicted entity type",
}


def pictures_markdown(model_dir: Path, images: list[str]) -> str:
    """The card's pictures inline (data: URIs), so the run page in the Prefect UI shows them."""
    import base64

    parts = ["# Pictures of the model card"]
    for name in images:
        data = base64.b64encode((model_dir / name).read_bytes()).decode()
        parts += [
            f"## {PICTURE_TITLES.get(name, name)}",
            f"![{PICTURE_TITLES.get(name, name)}](data:image/png;base64,{data})",
        ]
    return "\n\n".join(parts)


@task(name="widget-predictions", cache_policy=CacheKeyFnPolicy(cache_key_fn=_widget_cache_key), **JSON_RESULTS)
def widget_predictions_task(model: ModelRef, examples: list[str]) -> list[dict[str, Any]]:
    return widget_predictions(model.path, examples)
