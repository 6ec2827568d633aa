"""The dataset watcher: emit `nerflow.dataset.updated` when a dataset's revision changes.

Scheduled (every 15 minutes in deployments/prefect.yaml), it reads the dataset's current revision
without loading it (the Hub dataset sha, a hash of S3 ETags, or a content hash of local files),
compares it with the last one seen, kept in a Prefect Variable, and emits the event only on a change.
The training deployment's trigger turns that event into a run with the new revision.

Each revision is delivered at least once: the event is sent to the API and accepted (HTTP 204) before
the revision is recorded as seen, so an event that fails to send is sent again on the next check. With
its Variable lost, the watcher compares against the revision the last completed training of the
dataset used (the label `nerflow.dataset.revision` finetune_ner puts on its flow run). The first
sighting of a dataset nothing has trained on only records its revision: deploying the watcher does
not retrain.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.variables import Variable
from pydantic import BaseModel

from nerflow.flows.policy import check_dataset_policy
from nerflow.tasks.data.sources import source_revision
from nerflow.tasks.runtime.retry import REVISION_CHECK_TIMEOUT_S, TASK_RETRIES, network_retry_condition
from nerflow.tasks.settings import DatasetSettings

EVENT = "nerflow.dataset.updated"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,100}$")


class WatchResult(BaseModel):
    name: str
    revision: str
    previous: str | None
    emitted: bool


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"dataset name {name!r}: use lowercase letters, digits, '-' and '_' (it names an event resource)"
        )
    return name


def resource_id(name: str) -> str:
    return f"nerflow.dataset.{check_name(name)}"


def variable_name(name: str) -> str:
    return f"nerflow-dataset-{check_name(name)}-revision"


def dataset_updated(name: str, revision: str, source: str | None = None, previous: str | None = None) -> dict:
    """The event the training deployment's trigger listens for: its name, resource and payload."""
    return {
        "event": EVENT,
        "resource": {"prefect.resource.id": resource_id(name), "prefect.resource.name": name},
        "payload": {"revision": revision, "previous_revision": previous, "source": source},
    }


def emit_dataset_updated(name: str, revision: str, source: str | None = None, previous: str | None = None):
    """Emit the event in the background, as Prefect's emit_event does (nothing says it arrived)."""
    return emit_event(**dataset_updated(name, revision, source, previous))


def send_dataset_updated(name: str, revision: str, source: str | None = None, previous: str | None = None) -> str:
    """Send the event and return its id once the API accepted it; raise if it did not."""
    from prefect import get_client
    from prefect.events import Event

    event = Event(**dataset_updated(name, revision, source, previous))
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()
    return str(event.id)


TRAINED_REVISION_LABEL = "nerflow.dataset.revision"


def last_trained_revision(name: str) -> str | None:
    """The dataset revision the newest completed training of this dataset used: the label finetune_ner
    puts on its flow run, on the newest completed run tagged with the dataset's name."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["finetune_ner"])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[name]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=50,
        )
    return next(
        (run.labels[TRAINED_REVISION_LABEL] for run in runs if TRAINED_REVISION_LABEL in (run.labels or {})), None
    )


@task(
    name="read-revision",
    retry_condition_fn=network_retry_condition,
    timeout_seconds=REVISION_CHECK_TIMEOUT_S,
    **TASK_RETRIES,
)
def read_revision(dataset: DatasetSettings) -> str:
    return source_revision(dataset)


@flow(name="watch_dataset", description="Emit nerflow.dataset.updated when the dataset's revision changes.")
def watch_dataset(dataset: DatasetSettings, name: str) -> WatchResult:
    check_name(name)
    check_dataset_policy(dataset)
    revision = read_revision(dataset)
    key = variable_name(name)
    logger = get_run_logger()
    previous = Variable.get(key, default=None)
    if previous is None and (previous := last_trained_revision(name)) is not None:
        logger.info("dataset %s: no revision recorded as seen; the last completed training used %s", name, previous)
    emitted = previous is not None and previous != revision
    if emitted:
        event_id = send_dataset_updated(
            name, revision, dataset.source, previous
        )  # raises: nothing recorded, sent next time
        logger.info("dataset %s changed: %s -> %s; %s accepted as event %s", name, previous, revision, EVENT, event_id)
    elif previous is None:
        logger.info("dataset %s first seen at revision %s; recorded, nothing emitted", name, revision)
    else:
        logger.info("dataset %s unchanged at %s", name, revision)
    if Variable.get(key, default=None) != revision:
        Variable.set(key, revision, overwrite=True)
    return WatchResult(name=name, revision=revision, previous=previous, emitted=emitted)
