"""The pipeline, written once: ingest -> tokenize -> train -> evaluate -> analyze -> export (optional) ->
card -> widget predictions -> publish -> track.

`run_steps` runs the steps in this order, as Prefect tasks (the `finetune_ner` flow; the sweep, for its
shared data steps) or as their plain functions (`steps=PLAIN`: the benchmarks and the test helpers), up
to a named step. Each step takes the references earlier steps returned, its own settings section and
the run's context; how a step is cached is declared beside its task (nerflow.tasks.runtime.caching).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nerflow.tasks.analyze import analyze, analyze_task
from nerflow.tasks.card import model_card_task, widget_predictions_task
from nerflow.tasks.evaluate import EVALUATE, evaluate
from nerflow.tasks.export import export, export_task
from nerflow.tasks.ingest import ingest, ingest_task
from nerflow.tasks.publish import publish_task
from nerflow.tasks.refs import RunContext, TrackingRef, TrainJob
from nerflow.tasks.settings import RunSettings
from nerflow.tasks.tokenize import TOKENIZE, tokenize
from nerflow.tasks.track import start_tracking_task, track_task
from nerflow.tasks.train import TRAIN, train_model
from nerflow.tasks.training.pretrained import weights_fingerprint


@dataclass(frozen=True)
class Steps:
    """How the steps that also run outside Prefect are called."""

    ingest: Callable
    tokenize: Callable
    train: Callable
    evaluate: Callable
    analyze: Callable
    export: Callable
    prefect: bool


TASKS = Steps(ingest_task, TOKENIZE, TRAIN, EVALUATE, analyze_task, export_task, prefect=True)
PLAIN = Steps(ingest, tokenize, train_model, evaluate, analyze, export, prefect=False)
ORDER = ("ingest", "tokenize", "train", "evaluate", "analyze", "export", "card", "publish", "track")


@dataclass
class Outputs:
    """What the steps returned so far."""

    tracking: TrackingRef
    dataset: Any = None
    tokenized: Any = None
    job: Any = None
    model: Any = None
    evaluation: Any = None
    analysis: Any = None
    export: Any = None
    card: Any = None
    widget_predictions: list | None = None
    publication: Any = None


def train_job(settings: RunSettings, out: Outputs, ctx: RunContext) -> TrainJob:
    weights = weights_fingerprint(settings.base_model, settings.resolved_cache_dir())
    job = TrainJob.for_run(settings, out.tokenized, ctx, weights)
    return job.model_copy(update={"mlflow_run_id": out.tracking.mlflow_run_id})


def _ingest(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.dataset = steps.ingest(s.dataset, ctx)


def _tokenize(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.tokenized = steps.tokenize(out.dataset, s.base_model, s.tokenize, ctx)


def _train(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.job = train_job(s, out, ctx)
    out.model = steps.train(out.job)


def _evaluate(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.evaluation = steps.evaluate(out.model, out.tokenized, s.evaluation, s.compute, ctx)


def _analyze(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    # The label-issue finder trains fold models with the train step's own function and job.
    out.analysis = steps.analyze(out.model, out.dataset, out.tokenized, s.analysis, out.job, ctx, train_model)


def _export(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.export = steps.export(out.model, out.tokenized, s.export, s.compute, ctx)


def _card(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.card = model_card_task(out.model, out.evaluation, out.dataset, out.tokenized, s, ctx.run_name)
    out.widget_predictions = widget_predictions_task(out.model, out.card.widget_examples)


def _publish(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    out.publication = publish_task(ctx.run_dir, s.publish, s.resolved_model_name())


def _track(s: RunSettings, out: Outputs, ctx: RunContext, steps: Steps) -> None:
    if {"mlflow", "tensorboard"} & set(s.tracking.backends):
        published_to = out.publication.location() if out.publication.published else None
        out.tracking = track_task(
            out.tracking, s, ctx.run_name, ctx.run_dir, out.model, out.evaluation, out.card, out.dataset, published_to
        )


STAGES = dict(zip(ORDER, (_ingest, _tokenize, _train, _evaluate, _analyze, _export, _card, _publish, _track)))
# What only runs as Prefect tasks: the card, publishing and tracking report to the run page.
PREFECT_ONLY = ("card", "publish", "track")


def run_steps(
    settings: RunSettings,
    ctx: RunContext,
    steps: Steps = TASKS,
    until: str = ORDER[-1],
    after: dict[str, Callable[[Outputs], None]] | None = None,
) -> Outputs:
    """Run the pipeline up to and including `until`; `after[name](outputs)` runs after that step. Training
    returns no model on the secondary nodes of a multi-node run: the pipeline ends there for them."""
    if until not in ORDER or (not steps.prefect and until in PREFECT_ONLY):
        raise ValueError(f"run_steps: cannot run until {until!r} with these steps")
    tracking = TrackingRef()
    if steps.prefect and settings.tracking.backends:
        tracking = start_tracking_task(settings.tracking, ctx.run_name)
    out = Outputs(tracking=tracking)
    for name in ORDER[: ORDER.index(until) + 1]:
        STAGES[name](settings, out, ctx, steps)
        if after and name in after:
            after[name](out)
        if name == "train" and out.model is None:
            break
    return out
