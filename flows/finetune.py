"""The `finetune_ner` flow: the pipeline (nerflow.flows.pipeline) in a run folder of its own, under the
operator's policy, once per dataset revision.

Tasks hand each other small references (paths and fingerprints); the data and the weights stay on disk.
Every run writes into its own folder, OUTPUT_DIR/RUN_NAME: `model/` (weights, config with the labels,
tokenizer, README.md card), `checkpoints/`, `metrics.json`, `train_log.json` and `settings.json`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, State
from pydantic import BaseModel

from nerflow.flows.alerts import on_run_failure
from nerflow.flows.pipeline import Outputs, run_steps
from nerflow.flows.policy import check_run_policy
from nerflow.tasks.refs import DatasetRef, RunContext
from nerflow.tasks.runtime.caching import ensure_result_storage
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.files import atomic_write_json, folder_lock, recover_interrupted_swaps
from nerflow.tasks.runtime.logs import invalid_input, quiet_input_errors_on_console, quiet_third_party
from nerflow.tasks.settings import DatasetSettings, RunSettings


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
    """Part of train_runtime_s spent compiling the model (compute.compile)."""
    stopped_early: str | None = None
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None
    widget_predictions: list[dict] = []
    published: bool
    published_to: str
    gate: str


def resolve_run_name(settings: RunSettings) -> str:
    """settings.run_name, else a name derived from the Prefect flow run: its scheduled start and name.
    Both stay the same when the flow run is retried or scheduled again after a crash, so the new
    attempt finds the run folder and resumes from its checkpoints."""
    if settings.run_name:
        return settings.run_name
    from prefect.runtime import flow_run

    started = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    return f"{started.astimezone(timezone.utc):%Y%m%d-%H%M%S}-{flow_run.name or 'local'}"


# A dataset revision that another run of the deployment completed within this window is not trained
# again: a burst of dataset-update events for one revision trains once.
DEDUPE_WINDOW = timedelta(hours=24)


def revision_already_handled(revision: str | None) -> str | None:
    """Why this run has nothing to do, if another run of its deployment is handling, or completed,
    the same dataset revision; None otherwise (and for runs not started with a revision)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import deployment, flow_run

    if not revision or not deployment.id:
        return None
    since = datetime.now(timezone.utc) - DEDUPE_WINDOW
    states = FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.RUNNING, StateType.PENDING])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=states), expected_start_time=FlowRunFilterExpectedStartTime(after_=since)
            ),
            limit=200,
        )
    for run in runs:
        if str(run.id) != str(flow_run.id) and run.parameters.get("dataset_revision") == revision:
            return (
                f"dataset revision {revision} is already handled by flow run {run.name} "
                f"({run.state_type.value.lower()}); nothing to do"
            )
    return None


@contextmanager
def run_folder(settings: RunSettings, run_name: str) -> Iterator[Path]:
    """The run's folder, locked for this run (a second run with the same name is refused, never a second
    writer), cleared of what an earlier attempt's kill left half-done, with the resolved settings
    recorded (they hold no secrets, only block names)."""
    run_dir = Path(settings.output_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, f"run {run_name!r}"):
        for line in recover_interrupted_swaps(run_dir):
            get_run_logger().warning("%s: %s", run_dir, line)
        resolved = settings.model_copy(update={"run_name": run_name})
        atomic_write_json(run_dir / "settings.json", resolved.model_dump(mode="json"))
        yield run_dir


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
        + ([f"- Early stopping: {result.stopped_early}"] if result.stopped_early else [])
        + (
            [
                f"- MLflow run `{result.mlflow_run_id}`"
                + (f", registered model version {result.mlflow_model_version}" if result.mlflow_model_version else "")
            ]
            if result.mlflow_run_id
            else []
        )
        + ([f"- Model reused (cached) from `{result.reused_model_from}`"] if result.reused_model_from else [])
        + (examples if result.widget_predictions else [])
    )


@flow(
    name="finetune_ner",
    description="Fine-tune a BERT-family model for NER: ingest, tokenize, train, evaluate, card, publish.",
    on_failure=[on_run_failure],
    on_crashed=[on_run_failure],
)
def finetune_ner(
    settings: RunSettings = RunSettings(),  # noqa: B008 - a pydantic default renders as the UI form
    dataset_revision: str | None = None,
) -> RunResult | State | None:
    """`dataset_revision` overrides settings.dataset.revision: the dataset-update trigger passes the new
    revision here without replacing the rest of the deployment's settings. Returns None on the
    secondary nodes of a multi-node run, whose flow runs end after training.

    Unusable data or settings end the run Failed with one message that says what and where (the
    traceback goes to the run's log only); a revision another run of the deployment already handled
    ends it Completed without work."""
    quiet_input_errors_on_console()
    quiet_third_party()
    if dataset_revision:
        settings = settings.model_copy(
            update={"dataset": settings.dataset.model_copy(update={"revision": dataset_revision})}
        )
    try:
        check_run_policy(settings)
        if handled := revision_already_handled(dataset_revision):
            get_run_logger().info(handled)
            return Completed(message=handled)
        ensure_result_storage()
        run_name = resolve_run_name(settings)
        with run_folder(settings, run_name) as run_dir:
            return run_pipeline(settings, run_name, run_dir)
    except InputError as exc:
        return invalid_input(exc)


def run_pipeline(settings: RunSettings, run_name: str, run_dir: Path) -> RunResult | None:
    """The pipeline (nerflow.flows.pipeline) as Prefect tasks, then the run's summary artifact."""
    ctx = RunContext.for_run(settings, run_name, run_dir)
    out = run_steps(settings, ctx, after={"ingest": lambda out: label_trained_revision(settings.dataset, out.dataset)})
    if out.model is None:  # a secondary node of a multi-node run: rank 0's node does the rest
        return None
    result = run_result(ctx, out)
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(result), description="Where the model is")
    return result


def label_trained_revision(cfg: DatasetSettings, dataset: DatasetRef) -> None:
    """Put the dataset revision this run trains on as a label on the flow run, where the watcher finds
    it if its own record is lost (nerflow.flows.watcher.last_trained_revision). Best effort: a run never
    fails over its label."""
    from prefect import get_client
    from prefect.runtime import flow_run

    from nerflow.flows.watcher import TRAINED_REVISION_LABEL
    from nerflow.tasks.data.sources import source_revision

    try:
        revision = dataset.source_revision or source_revision(cfg)
        if flow_run.id:
            with get_client(sync_client=True) as client:
                client.update_flow_run_labels(flow_run.id, {TRAINED_REVISION_LABEL: revision})
    except Exception as e:
        get_run_logger().debug("could not label the run with its dataset revision: %s", type(e).__name__)


def run_result(ctx: RunContext, out: Outputs) -> RunResult:
    model, evaluation, publication = out.model, out.evaluation, out.publication
    return RunResult(
        run_name=ctx.run_name,
        run_dir=ctx.run_dir,
        model_dir=model.path,
        card_path=out.card.path,
        metrics_path=evaluation.path,
        settings_path=str(Path(ctx.run_dir) / "settings.json"),
        test_f1=evaluation.test["f1"],
        test_precision=evaluation.test["precision"],
        test_recall=evaluation.test["recall"],
        validation_f1=evaluation.word_level["validation"]["f1"],
        dataset_fingerprint=out.dataset.fingerprint,
        resumed_from=model.resumed_from,
        reused_model_from=model.reused_from,
        train_runtime_s=model.train_runtime_s,
        compile_s=model.compile_s,
        stopped_early=model.stopped_early,
        widget_predictions=out.widget_predictions or [],
        published=publication.published,
        published_to=publication.location(),
        gate=publication.gate.reason,
        mlflow_run_id=out.tracking.mlflow_run_id,
        mlflow_model_version=out.tracking.registered_version,
    )
