"""The dataset watcher: emit `nerflow.dataset.updated` when a dataset's revision changes.

Scheduled (every 15 minutes in deployments/prefect.yaml), it reads the dataset's current revision
without loading it (the Hub dataset sha, a hash of S3 ETags, or a content hash of local files),
compares it with the last one seen, kept in a Prefect Variable, and emits the event only on a change.
The training deployment's trigger turns that event into a run with the new revision.
The first sighting of a dataset only records its revision: deploying the watcher does not retrain.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.variables import Variable
from pydantic import BaseModel

from flows.settings import DatasetSettings
from tasks.policy import check_dataset_policy
from tasks.sources import source_revision
from tasks.retry import REVISION_CHECK_TIMEOUT_S, TASK_RETRIES, network_retry_condition

EVENT = "nerflow.dataset.updated"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,100}$")


class WatchResult(BaseModel):
    name: str
    revision: str
    previous: str | None
    emitted: bool


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r}: use lowercase letters, digits, '-' and '_' (it names an event resource)")
    return name


def resource_id(name: str) -> str:
    return f"nerflow.dataset.{check_name(name)}"


def variable_name(name: str) -> str:
    return f"nerflow-dataset-{check_name(name)}-revision"


def emit_dataset_updated(name: str, revision: str, source: str | None = None, previous: str | None = None):
    """Emit the event the training deployment's trigger listens for (also `nerflow trigger`)."""
    return emit_event(
        event=EVENT,
        resource={"prefect.resource.id": resource_id(name), "prefect.resource.name": name},
        payload={"revision": revision, "previous_revision": previous, "source": source},
    )


@task(name="read-revision", retry_condition_fn=network_retry_condition, timeout_seconds=REVISION_CHECK_TIMEOUT_S, **TASK_RETRIES)
def read_revision(dataset: DatasetSettings) -> str:
    return source_revision(dataset)


@flow(name="watch_dataset", description="Emit nerflow.dataset.updated when the dataset's revision changes.")
def watch_dataset(dataset: DatasetSettings, name: str) -> WatchResult:
    check_name(name)
    check_dataset_policy(dataset)
    revision = read_revision(dataset)
    key = variable_name(name)
    previous = Variable.get(key, default=None)
    logger = get_run_logger()
    emitted = previous is not None and previous != revision
    if emitted:
        emit_dataset_updated(name, revision, dataset.source, previous)
        logger.info("dataset %s changed: %s -> %s; emitted %s", name, previous, revision, EVENT)
    elif previous is None:
        logger.info("dataset %s first seen at revision %s; recorded, nothing emitted", name, revision)
    else:
        logger.info("dataset %s unchanged at %s", name, revision)
    if previous != revision:
        Variable.set(key, revision, overwrite=True)
    return WatchResult(name=name, revision=revision, previous=previous, emitted=emitted)
