"""The dataset watcher delivers each revision at least once: recorded as seen only once the API
accepted the event; with its record lost, it compares against the last completed training's revision.
Against a real (temporary) Prefect server; the end-to-end trigger is in test_deployments.py."""

from __future__ import annotations

import shutil

import pytest

import nerflow.flows.watcher
from conftest import SAMPLE_DIR
from nerflow.flows.watcher import TRAINED_REVISION_LABEL, variable_name, watch_dataset
from nerflow.tasks.settings import DatasetSettings
from prefect_db import seeded_test_harness

pytestmark = pytest.mark.slow  # a Prefect server


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with seeded_test_harness():
        yield


def events_sent(name: str, at_least: int) -> list[dict]:
    """nerflow.dataset.updated events for the dataset, once the server stored at least that many (its
    event persister writes every few seconds)."""
    import time

    from prefect import get_client

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            found = client.request(
                "POST", "/events/filter", json={"filter": {"event": {"name": ["nerflow.dataset.updated"]}}, "limit": 50}
            )
        events = [e for e in found.json()["events"] if e["resource"]["prefect.resource.name"] == name]
        if len(events) >= at_least or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def change(folder) -> None:
    with (folder / "train.jsonl").open("a") as f:
        f.write('{"tokens": ["Oslo"], "ner_tags": [5]}\n')


def test_an_event_that_fails_to_send_is_sent_on_the_next_check(tmp_path, monkeypatch):
    folder = shutil.copytree(SAMPLE_DIR, tmp_path / "data")
    dataset = DatasetSettings(source=str(folder))
    first = watch_dataset(dataset=dataset, name="retried")
    assert not first.emitted and first.previous is None  # first sighting: recorded, not emitted
    change(folder)
    send = nerflow.flows.watcher.send_dataset_updated

    def refused(*args, **kwargs):
        raise ConnectionError("the API went away")

    monkeypatch.setattr(nerflow.flows.watcher, "send_dataset_updated", refused)
    state = watch_dataset(dataset=dataset, name="retried", return_state=True)
    assert state.is_failed()
    from prefect.variables import Variable

    assert Variable.get(variable_name("retried")) == first.revision  # the new revision is not recorded as seen
    monkeypatch.setattr(nerflow.flows.watcher, "send_dataset_updated", send)
    again = watch_dataset(dataset=dataset, name="retried")
    assert again.emitted and again.previous == first.revision
    assert not watch_dataset(dataset=dataset, name="retried").emitted
    (event,) = events_sent("retried", 1)
    assert event["payload"]["revision"] == again.revision


def test_with_its_record_lost_the_watcher_compares_against_the_last_training(tmp_path):
    from prefect import flow, get_client
    from prefect.states import Completed
    from prefect.variables import Variable

    folder = shutil.copytree(SAMPLE_DIR, tmp_path / "data")
    dataset = DatasetSettings(source=str(folder))
    trained = watch_dataset(dataset=dataset, name="lost-record").revision

    @flow(name="finetune_ner")
    def training():
        pass

    with get_client(sync_client=True) as client:  # what finetune_ner leaves: a completed run, tagged, labelled
        run = client.create_flow_run(training, tags=["lost-record"])
        client.update_flow_run_labels(run.id, {TRAINED_REVISION_LABEL: trained})
        client.set_flow_run_state(run.id, Completed(), force=True)
    Variable.unset(variable_name("lost-record"))
    change(folder)
    result = watch_dataset(dataset=dataset, name="lost-record")
    assert result.emitted and result.previous == trained  # not a "first sighting"
    assert [e["payload"]["previous_revision"] for e in events_sent("lost-record", 1)] == [trained]
