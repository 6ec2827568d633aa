"""track: the run in MLflow and TensorBoard, once it is evaluated, documented and published.

W&B, MLflow and TensorBoard already receive the live training curves from the Trainer (the train step
sets their environment). This step logs what only the whole run knows, so a model reused from the cache
(trained in an earlier run) is tracked as completely as a fresh one:

- MLflow (the run opened by `start_tracking` before training): every run setting as a param, the
  per-epoch table (`epoch/*`, step = epoch), the word-level test scores overall and per entity
  (`test/*`), the card, its pictures and metrics.json as artifacts; a published model becomes a
  version of the registered model, tagged with the run and the dataset revision;
- TensorBoard: the per-epoch table and the test scores in RUN_DIR/tensorboard.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from nerflow.tasks.refs import CardRef, DatasetRef, EvaluationRef, ModelRef, TrackingRef
from nerflow.tasks.reporting.trackers import (
    TENSORBOARD_DIR,
    epoch_metrics,
    final_test_metrics,
    flat_params,
    mlflow_environment,
    require,
)
from nerflow.tasks.runtime.retry import TASK_RETRIES, network_retry_condition
from nerflow.tasks.runtime.secrets import scoped_environ
from nerflow.tasks.settings import RunSettings, TrackingSettings


def start_tracking(tracking: TrackingSettings, run_name: str) -> TrackingRef:
    """Open the run's MLflow run (if MLflow is a backend); check every chosen backend is installed."""
    for backend in tracking.backends:
        require(backend, backend)
    if "mlflow" not in tracking.backends:
        return TrackingRef()
    from mlflow import MlflowClient

    with scoped_environ(mlflow_environment(tracking)):
        client = MlflowClient()
        experiment = client.get_experiment_by_name(tracking.mlflow_experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.mlflow_experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags={"nerflow.run": run_name})
    return TrackingRef(mlflow_run_id=run.info.run_id, mlflow_experiment_id=experiment_id)


def _batches(items: list, size: int = 100):
    return (items[i : i + size] for i in range(0, len(items), size))


def log_to_mlflow(
    ref: TrackingRef,
    settings: RunSettings,
    run_name: str,
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
):
    """Params, metrics and the card's files into the run's MLflow run; returns the client."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    resolved = settings.model_copy(update={"run_name": run_name})
    params = flat_params(resolved) | {
        "dataset.resolved_revision": dataset.revision,
        "dataset.fingerprint": dataset.fingerprint,
    }
    for batch in _batches([Param(k, v[:6000]) for k, v in params.items()]):
        client.log_batch(ref.mlflow_run_id, params=batch)
    now = int(time.time() * 1000)
    last_epoch = max((step for _, _, step in epoch_metrics(model.epochs)), default=0)
    metrics = [Metric(name, value, now, step) for name, value, step in epoch_metrics(model.epochs)]
    metrics += [Metric(name, value, now, last_epoch) for name, value in final_test_metrics(evaluation).items()]
    for batch in _batches(metrics, 500):
        client.log_batch(ref.mlflow_run_id, metrics=batch)
    model_dir = Path(model.path)
    for name in ("README.md", "training_curves.png", "confusion_matrix.png"):
        if (model_dir / name).is_file():
            client.log_artifact(ref.mlflow_run_id, str(model_dir / name), "card")
    client.log_artifact(ref.mlflow_run_id, evaluation.path, "metrics")
    return client


def register_model(
    client, ref: TrackingRef, name: str, model: ModelRef, run_name: str, dataset: DatasetRef, published_to: str
) -> str:
    """The model folder as the run's artifact `model`, and a new version of the registered model."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(ref.mlflow_run_id, model.path, "model")
    try:
        client.create_registered_model(name, description="Token classification (NER) models trained by nerflow")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(ref.mlflow_run_id).info.artifact_uri}/model"
    tags = {"nerflow.run": run_name, "dataset.revision": dataset.revision, "published_to": published_to}
    return client.create_model_version(name, source, run_id=ref.mlflow_run_id, tags=tags).version


def log_to_tensorboard(run_dir: Path, model: ModelRef, evaluation: EvaluationRef) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))
    try:
        rows = epoch_metrics(model.epochs)
        for name, value, step in rows:
            writer.add_scalar(name, value, step)
        for name, value in final_test_metrics(evaluation).items():
            writer.add_scalar(name, value, max((s for _, _, s in rows), default=0))
    finally:
        writer.close()


def finish_tracking(
    ref: TrackingRef,
    settings: RunSettings,
    run_name: str,
    run_dir: Path,
    model: ModelRef,
    evaluation: EvaluationRef,
    dataset: DatasetRef,
    published_to: str | None,
) -> TrackingRef:
    """Log the evaluated, documented run; register it in MLflow if it was published (published_to)."""
    backends = settings.tracking.backends
    if "tensorboard" in backends:
        log_to_tensorboard(run_dir, model, evaluation)
    if "mlflow" in backends and ref.mlflow_run_id:
        with scoped_environ(mlflow_environment(settings.tracking)):
            client = log_to_mlflow(ref, settings, run_name, model, evaluation, dataset)
            if published_to:
                name = settings.tracking.mlflow_registered_model or settings.resolved_model_name()
                ref = ref.model_copy(
                    update={
                        "registered_version": register_model(client, ref, name, model, run_name, dataset, published_to)
                    }
                )
            client.set_terminated(ref.mlflow_run_id, "FINISHED")
    return ref


@task(name="track-start", cache_policy=NO_CACHE, retry_condition_fn=network_retry_condition, **TASK_RETRIES)
def start_tracking_task(tracking: TrackingSettings, run_name: str) -> TrackingRef:
    return start_tracking(tracking, run_name)


@task(name="track", cache_policy=NO_CACHE, retry_condition_fn=network_retry_condition, **TASK_RETRIES)
def track_task(
    ref: TrackingRef,
    settings: RunSettings,
    run_name: str,
    run_dir: str,
    model: ModelRef,
    evaluation: EvaluationRef,
    card: CardRef,
    dataset: DatasetRef,
    published_to: str | None,
) -> TrackingRef:
    ref = finish_tracking(ref, settings, run_name, Path(run_dir), model, evaluation, dataset, published_to)
    if ref.registered_version:
        get_run_logger().info("registered in MLflow as version %s", ref.registered_version)
    return ref
