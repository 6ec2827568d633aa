"""The `finetune_ner` flow: ingest -> tokenize -> train -> evaluate -> model card -> publish.

Tasks hand each other small references (paths and fingerprints); the data and the weights stay on disk.
Every run writes into its own folder, OUTPUT_DIR/RUN_NAME: `model/` (weights, config with the labels,
tokenizer, README.md card), `checkpoints/`, `metrics.json`, `train_log.json` and `settings.json`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.settings import RunSettings
from tasks.caching import adopt_outputs, cached_or_rebuilt
from tasks.card import model_card_task, widget_predictions_task
from tasks.evaluate import evaluate_task, metrics_exist
from tasks.ingest import ingest_task
from tasks.publish import publish_task
from tasks.storage import atomic_write_json
from tasks.refs import TrainJob
from tasks.tokenize import tokenize_task, tokenized_exists
from tasks.train import model_exists, train_task


class RunResult(BaseModel):
    run_name: str
    run_dir: str
    model_dir: str
    card_path: str
    metrics_path: str
    settings_path: str
    test_f1: float
    test_precision: float
    test_recall: float
    validation_f1: float
    dataset_fingerprint: str
    resumed_from: str | None
    reused_model_from: str | None
    train_runtime_s: float = 0.0
    compile_s: float = 0.0
    """Part of train_runtime_s spent compiling the model (train.compile)."""
    widget_predictions: list[dict] = []
    published: bool
    published_to: str
    gate: str


def resolve_run_name(settings: RunSettings) -> str:
    if settings.run_name:
        return settings.run_name
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{flow_run.name or 'local'}"


def prepare_run_dir(settings: RunSettings, run_name: str) -> Path:
    """Create the run folder and record the resolved settings (they hold no secrets, only block names)."""
    run_dir = Path(settings.output_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = settings.model_copy(update={"run_name": run_name})
    atomic_write_json(run_dir / "settings.json", resolved.model_dump(mode="json"))
    return run_dir


def summary_markdown(result: RunResult) -> str:
    examples = ["", "## Widget examples: entities the new model finds", "", "| text | entities |", "|---|---|"] + [
        "| {} | {} |".format(
            p["text"].replace("|", "\\|"),
            ", ".join(f"{e['text']} ({e['entity']}, {e['score']:.2f})" for e in p["entities"]) or "(none)",
        )
        for p in result.widget_predictions
    ]
    return "\n".join(
        [
            f"# nerflow run `{result.run_name}`",
            "",
            f"- Model: `{result.model_dir}` (card: `{result.card_path}`)",
            f"- Metrics: `{result.metrics_path}`",
            f"- Test F1 (word level): **{result.test_f1:.4f}** (precision {result.test_precision:.4f}, "
            f"recall {result.test_recall:.4f}); validation F1 {result.validation_f1:.4f}",
            f"- Dataset fingerprint: `{result.dataset_fingerprint[:16]}`",
            f"- Published: {'yes, ' + result.published_to if result.published else 'no'} ({result.gate})",
        ]
        + ([f"- Training resumed from `{result.resumed_from}`"] if result.resumed_from else [])
        + ([f"- Model reused (cached) from `{result.reused_model_from}`"] if result.reused_model_from else [])
        + (examples if result.widget_predictions else [])
    )


@flow(name="finetune_ner", description="Fine-tune a BERT-family model for NER: ingest, tokenize, train, evaluate, card, publish.")
def finetune_ner(
    settings: RunSettings = RunSettings(),  # noqa: B008 - a pydantic default renders as the UI form
    dataset_revision: str | None = None,
) -> RunResult | None:
    """`dataset_revision` overrides settings.dataset.revision: the dataset-update trigger passes the new
    revision here without replacing the rest of the deployment's settings. Returns None on the
    secondary nodes of a multi-node run, whose flow runs end after training."""
    if dataset_revision:
        settings = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"revision": dataset_revision})})
    run_name = resolve_run_name(settings)
    run_dir = prepare_run_dir(settings, run_name)
    cache_dir = str(settings.resolved_cache_dir())

    dataset = ingest_task(settings.dataset, cache_dir)
    tokenized = cached_or_rebuilt(tokenize_task, tokenized_exists, dataset, settings.model, settings.tokenize, cache_dir)
    job = TrainJob.for_run(settings, tokenized, run_dir, run_name)
    train_step = train_task if settings.train.reuse_cached_model else train_task.with_options(refresh_cache=True)
    model = cached_or_rebuilt(train_step, model_exists, job)
    if model is None:  # a secondary node of a multi-node run: rank 0's node does the rest
        return None
    evaluation = cached_or_rebuilt(
        evaluate_task, metrics_exist, model, tokenized, str(run_dir), settings.train.eval_batch_size, settings.evaluation.decoding
    )
    model, evaluation = adopt_outputs(run_dir, model, evaluation)  # cache hits may point to an earlier run
    card = model_card_task(model, evaluation, dataset, tokenized, settings, run_name)
    found = widget_predictions_task(model, card.widget_examples)
    publication = publish_task(str(run_dir), settings.publish, settings.resolved_model_name())

    result = RunResult(
        run_name=run_name,
        run_dir=str(run_dir),
        model_dir=model.path,
        card_path=card.path,
        metrics_path=evaluation.path,
        settings_path=str(run_dir / "settings.json"),
        test_f1=evaluation.test["f1"],
        test_precision=evaluation.test["precision"],
        test_recall=evaluation.test["recall"],
        validation_f1=evaluation.word_level["validation"]["f1"],
        dataset_fingerprint=dataset.fingerprint,
        resumed_from=model.resumed_from,
        reused_model_from=model.reused_from,
        train_runtime_s=model.train_runtime_s,
        compile_s=model.compile_s,
        widget_predictions=found,
        published=publication.published,
        published_to=publication.location(),
        gate=publication.gate.reason,
    )
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(result), description="Where the model is")
    return result
