"""The `sweep_ner` flow: a hyperparameter grid, one `finetune_ner` run per trial, the best one published.

Every trial is checked before the first one starts (a bad value fails the sweep at once). The dataset is
ingested and tokenized once before the trials, so trials that differ only in training settings share
the tokenization cache. Trials run as subflows one after the other, or, with a deployment, as runs of
that deployment on its work pool, up to `max_parallel` at a time (the pool's `sweep` queue). A trial that
fails or crashes is run once more (same run name: it resumes from its checkpoints), then marked failed;
the sweep goes on. A leaderboard table artifact is updated after each trial. The best trial is the one
with the highest **validation** F1 (the test split stays untouched by the choice), and only it goes
through the quality gate to the publish targets.
"""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel, ValidationError

from nerflow.flows.finetune import finetune_ner
from nerflow.flows.pipeline import run_steps
from nerflow.flows.policy import policy_problems, refuse
from nerflow.flows.queues import SWEEP_QUEUE
from nerflow.tasks.publish import PublishResult, publish_task
from nerflow.tasks.refs import RunContext
from nerflow.tasks.runtime.caching import ensure_result_storage
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.files import folder_lock
from nerflow.tasks.settings import RunSettings, SettingsError, apply_overrides, describe_validation_error


class Trial(BaseModel):
    number: int
    overrides: dict[str, Any]
    run_name: str
    state: str = "pending"
    validation_f1: float | None = None
    test_f1: float | None = None
    seconds: float | None = None
    attempts: int = 0
    run_dir: str | None = None
    message: str | None = None


class SweepResult(BaseModel):
    name: str
    trials: list[Trial]
    best: Trial | None
    publication: PublishResult | None


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """--grid KEY=V1,V2,... (values are YAML: 1e-5 is a number) -> {KEY: [V1, V2, ...]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise SettingsError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def trial_settings(
    base: RunSettings, grid: dict[str, list[Any]], name: str
) -> list[tuple[dict[str, Any], RunSettings]]:
    """Every combination of the grid's values applied to base, checked; trials publish nothing."""
    trials = []
    for number, values in enumerate(itertools.product(*grid.values()) if grid else [()], start=1):
        overrides = dict(zip(grid, values))
        data = apply_overrides(base.model_dump(mode="json"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        data |= {"run_name": f"{name}-t{number}", "publish": {**data["publish"], "targets": ["local"]}}
        try:
            trials.append((overrides, RunSettings.model_validate(data)))
        except ValidationError as e:
            raise SettingsError(describe_validation_error(e, f"sweep trial {number} {overrides}")) from e
    return trials


def check_sweep_policy(settings: RunSettings, trials: list[tuple[dict[str, Any], RunSettings]]) -> None:
    """The policy for the sweep's settings and every trial's (a grid value may name a place or code),
    every problem named once, before any work."""
    from nerflow.tasks.settings.trainer_args import check_trainer_values

    problems: list[str] = []
    for checked in [settings, *(trial for _, trial in trials)]:
        problems += [p for p in policy_problems(checked) if p not in problems]
    refuse(problems)
    for _, trial in trials:
        check_trainer_values(trial.train.trainer_args)


def warm_caches(trials: list[tuple[dict[str, Any], RunSettings]]) -> None:
    """Ingest and tokenize once per distinct data/model/tokenization, so no two trials do it."""
    seen = set()
    for _, s in trials:
        key = json.dumps(
            [
                s.dataset.model_dump(mode="json"),
                s.base_model.model_dump(mode="json"),
                s.tokenize.model_dump(mode="json"),
                s.cache_dir,
                s.output_dir,
            ]
        )
        if key not in seen:
            seen.add(key)
            run_steps(s, RunContext.for_run(s, f"{s.run_name}-warm-up"), until="tokenize")


def run_trial(trial: Trial, settings: RunSettings, deployment: str | None, retries: int) -> Trial:
    """One trial, tried 1 + retries times (a retry resumes from the trial's checkpoints)."""
    started = time.perf_counter()
    for attempt in range(1, retries + 2):
        trial.attempts = attempt
        if deployment:
            from prefect.deployments import run_deployment

            flow_run = run_deployment(
                deployment,
                parameters={"settings": settings.model_dump(mode="json")},
                work_queue_name=SWEEP_QUEUE,
                timeout=None,
                as_subflow=True,
            )
            state = flow_run.state
        else:
            state = finetune_ner(settings=settings, return_state=True)
        if state is not None and state.is_completed():
            break
        trial.message = (state.message if state else "no state") or "failed"
    trial.seconds = round(time.perf_counter() - started, 1)
    run_dir = Path(settings.output_dir) / trial.run_name
    if state is not None and state.is_completed() and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["word_level"]
        trial.state, trial.run_dir, trial.message = "completed", str(run_dir), None
        trial.validation_f1, trial.test_f1 = metrics["validation"]["f1"], metrics["test"]["f1"]
    else:
        trial.state = "failed"
    return trial


def leaderboard(trials: list[Trial]) -> list[dict[str, Any]]:
    rows = sorted(trials, key=lambda t: (t.validation_f1 is None, -(t.validation_f1 or 0), t.number))

    def cell(v: Any) -> Any:
        return json.dumps(v) if isinstance(v, (list, dict)) else v

    scores = ("state", "validation_f1", "test_f1", "seconds", "attempts")
    return [
        {"trial": t.number, **{k: cell(v) for k, v in t.overrides.items()}, **{k: getattr(t, k) for k in scores}}
        for t in rows
    ]


@flow(name="sweep_ner", description="Train one run per point of a hyperparameter grid; publish the validation-best.")
def sweep_ner(
    settings: RunSettings = RunSettings(),  # noqa: B008 - a pydantic default renders as the UI form
    grid: dict[str, list[Any]] = {},  # noqa: B006 - read only
    name: str | None = None,
    deployment: str | None = None,
    max_parallel: int = 2,
    retries: int = 1,
) -> SweepResult:
    name = name or f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    trials = trial_settings(settings, grid, name)
    check_sweep_policy(settings, trials)
    ensure_result_storage()
    logger = get_run_logger()
    logger.info("sweep %s: %d trial(s) over %s", name, len(trials), sorted(grid))
    warm_caches(trials)
    board = [Trial(number=i, overrides=o, run_name=s.run_name) for i, (o, s) in enumerate(trials, start=1)]

    def finished(trial: Trial) -> Trial:
        create_table_artifact(
            key="sweep-leaderboard", table=leaderboard(board), description=f"Sweep {name}: trials by validation F1"
        )
        logger.info(
            "trial %d %s: validation F1 %s, test F1 %s", trial.number, trial.state, trial.validation_f1, trial.test_f1
        )
        return trial

    if deployment:
        ensure_sweep_queue(deployment, max_parallel)
        with ThreadPoolExecutor(max_workers=max_parallel) as pool:
            list(pool.map(lambda t: finished(run_trial(t, trials[t.number - 1][1], deployment, retries)), board))
    else:
        for trial, (_, trial_run) in zip(board, trials):
            finished(run_trial(trial, trial_run, None, retries))
    completed = [t for t in board if t.state == "completed"]
    if not completed:
        raise InputError(f"sweep {name}: no trial completed ({'; '.join(f'{t.number}: {t.message}' for t in board)})")
    best = max(completed, key=lambda t: (t.validation_f1, -t.number))
    logger.info("best trial: %d %s (validation F1 %.4f)", best.number, best.overrides, best.validation_f1)
    with folder_lock(Path(best.run_dir), f"publish of sweep {name}'s best trial", wait_s=600):
        publication = publish_task(best.run_dir, settings.publish, settings.resolved_model_name())
    return SweepResult(name=name, trials=board, best=best, publication=publication)


def ensure_sweep_queue(deployment: str, max_parallel: int) -> None:
    """The deployment's pool gets a `sweep` queue limited to max_parallel runs at a time."""
    from prefect import get_client

    from nerflow.flows.queues import ensure_queue

    with get_client(sync_client=True) as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
        ensure_queue(client, pool, SWEEP_QUEUE, max_parallel)
