"""What the trackers (W&B, MLflow, TensorBoard) need: their environment and nerflow's numbers shaped
for them. The train step sets `tracking_environment` for the training call only (the Trainer's own
loggers read it); the track step (nerflow.tasks.track) logs the rest."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.logs import run_logger
from nerflow.tasks.runtime.secrets import resolve_secret
from nerflow.tasks.settings import RunSettings, TrackingSettings

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"


def require(module: str, backend: str) -> None:
    """InputError before any work if a chosen tracking backend is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"tracking.backends includes {backend!r}, which needs {module}: pip install 'nerflow[{backend}]'"
        )


def mlflow_environment(tracking: TrackingSettings) -> dict[str, str]:
    """MLflow's server address and credentials (a Secret block holding a token or user:password)."""
    env = {"MLFLOW_EXPERIMENT_NAME": tracking.mlflow_experiment}
    if uri := tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = uri
    if secret := resolve_secret(tracking.mlflow_credentials_block, "MLFLOW_TRACKING_TOKEN"):
        user, sep, password = secret.partition(":")
        env.update(
            {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
            if sep
            else {"MLFLOW_TRACKING_TOKEN": secret}
        )
    return env


def wandb_environment(tracking: TrackingSettings, run_dir: Path, run_name: str) -> dict[str, str]:
    """W&B's project, folder and key; offline mode when no key is configured."""
    env = {"WANDB_PROJECT": tracking.wandb_project, "WANDB_DIR": str(run_dir), "WANDB_NAME": run_name}
    env["WANDB_SILENT"] = os.environ.get("WANDB_SILENT", "true")
    if tracking.wandb_entity:
        env["WANDB_ENTITY"] = tracking.wandb_entity
    key = resolve_secret(tracking.wandb_api_key_block, "WANDB_API_KEY")
    if key:
        env.update(WANDB_API_KEY=key, WANDB_MODE=os.environ.get("WANDB_MODE", "online"))
    else:
        run_logger(log).info(
            "no W&B key in Secret block %r or WANDB_API_KEY: W&B runs offline", tracking.wandb_api_key_block
        )
        env["WANDB_MODE"] = "offline"
    return env


def tracking_environment(
    tracking: TrackingSettings, run_dir: Path, run_name: str, mlflow_run_id: str | None
) -> dict[str, str]:
    """What the Trainer's loggers read, for the backends chosen (empty for none)."""
    env: dict[str, str] = {}
    if "wandb" in tracking.backends:
        env |= wandb_environment(tracking, run_dir, run_name)
    if "tensorboard" in tracking.backends:
        env["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / TENSORBOARD_DIR)
    if "mlflow" in tracking.backends and mlflow_run_id:
        env |= mlflow_environment(tracking) | {"MLFLOW_RUN_ID": mlflow_run_id}
    return env


def flat_params(settings: RunSettings) -> dict[str, str]:
    """Every setting as `section.field` -> text (lists and mappings as JSON); top-level fields as
    `run.field` (the Trainer's own logger already uses bare names such as output_dir)."""
    params = {}
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            name = f"{section}.{key}" if key else f"run.{section}"
            params[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return params


def final_test_metrics(evaluation) -> dict[str, float]:
    """Word-level test scores overall and per entity, and the argmax decoding's F1 beside them."""
    test = evaluation.test
    metrics = {f"test/{k}": float(test[k]) for k in ("f1", "precision", "recall", "accuracy")}
    metrics |= {
        f"test/{entity}/{k}": float(s[k])
        for entity, s in test["per_entity"].items()
        for k in ("f1", "precision", "recall")
    }
    if evaluation.word_level_argmax:
        metrics["test/f1_argmax"] = float(evaluation.word_level_argmax["test"]["f1"])
    return metrics


def epoch_metrics(epochs: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """(name, value, epoch) of the per-epoch table: training loss and validation scores."""
    names = {
        "train_loss": "epoch/train_loss",
        "eval_loss": "epoch/val_loss",
        "val_precision": "epoch/val_precision",
        "val_recall": "epoch/val_recall",
        "val_f1": "epoch/val_f1",
    }
    return [
        (names[k], float(row[k]), int(round(row["epoch"]))) for row in epochs for k in names if row.get(k) is not None
    ]
