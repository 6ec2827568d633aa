"""Deployments end to end: `nerflow serve` starts a real Prefect server (SQLite, 127.0.0.1, free port,
fresh PREFECT_HOME), the `gpu` process pool, `prefect deploy` of deployments/prefect.yaml (parameters
pointed at the tiny BERT and the bundled sample) and a real worker. Runs are started with
`prefect deployment run`, through the REST API and by the dataset event."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import SAMPLE_DIR
from serve_stack import deployment_spec, start_serve, stop_serve

pytestmark = pytest.mark.slow  # a real Prefect server, work pool, deployments and worker

DEPLOYMENT = "finetune_ner/wikiann-bn"


def api(base: str, method: str, path: str, body=None, attempts: int = 5):
    """One JSON call; retried on 503, which a SQLite-backed server answers while its database is busy."""
    for attempt in range(attempts):
        status, payload = _call(base, method, path, body)
        if status != 503:
            break
        time.sleep(1 + attempt)
    return status, payload


def _call(base: str, method: str, path: str, body=None):
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("stack")
    watched = shutil.copytree(SAMPLE_DIR, root / "watched-data")
    spec = deployment_spec(root, tiny_bert)
    spec["deployments"][1]["parameters"]["dataset"] = {"source": str(watched)}
    proc, port = start_serve(
        root, spec, {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    )
    base = f"http://127.0.0.1:{port}/api"
    child_env = {**os.environ, "PREFECT_API_URL": base, "PREFECT_HOME": str(root / "client-home")}
    yield {"api": base, "root": root, "env": child_env, "watched": watched, "proc": proc}

    assert stop_serve(proc) == 0
    worker_log = (root / "work" / "worker.log").read_text()
    assert "Worker" in worker_log


def deployment_id(stack) -> str:
    status, body = api(stack["api"], "GET", f"/deployments/name/{DEPLOYMENT}")
    assert status == 200, body
    return body["id"]


def flow_runs(stack, **state_filter) -> list[dict]:
    body = {"deployments": {"id": {"any_": [deployment_id(stack)]}}, "sort": "EXPECTED_START_TIME_ASC"}
    if state_filter:
        body["flow_runs"] = {"state": {"type": {"any_": state_filter["types"]}}}
    status, runs = api(stack["api"], "POST", "/flow_runs/filter", body)
    assert status == 200, runs
    return runs


def test_deployment_shape(stack):
    status, dep = api(stack["api"], "GET", f"/deployments/name/{DEPLOYMENT}")
    assert dep["work_pool_name"] == "gpu" and dep["enforce_parameter_schema"] is True
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * 1"]
    status, automations = api(stack["api"], "POST", "/automations/filter", {})
    trigger = next(a for a in automations if a["actions"][0].get("deployment_id") == dep["id"])
    assert trigger["trigger"]["expect"] == ["nerflow.dataset.updated"]
    assert trigger["trigger"]["match"] == {"prefect.resource.id": "nerflow.dataset.wikiann-bn"}


def test_schedule_creates_scheduled_runs(stack):
    deadline = time.monotonic() + 60
    while not (scheduled := flow_runs(stack, types=["SCHEDULED"])):
        assert time.monotonic() < deadline, "the scheduler created no run"
        time.sleep(1)
    assert all(r["expected_start_time"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) for r in scheduled)
    assert all(r["auto_scheduled"] for r in scheduled)


def test_runs_from_cli_rest_and_event_complete(stack):
    env = stack["env"]
    before = {r["id"] for r in flow_runs(stack)}

    cli = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", DEPLOYMENT], env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    status, rest_run = api(
        stack["api"], "POST", f"/deployments/{deployment_id(stack)}/create_flow_run", {"parameters": {"dataset_revision": "rest-1"}}
    )
    assert status == 201, rest_run

    event = subprocess.run(
        [sys.executable, "-m", "flows.cli", "trigger", "wikiann-bn", "--revision", "ev-42"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert event.returncode == 0 and "emitted nerflow.dataset.updated" in event.stdout, event.stdout + event.stderr

    deadline = time.monotonic() + 420
    while True:
        new = [r for r in flow_runs(stack) if r["id"] not in before and not r["auto_scheduled"]]
        states = {r["id"]: r["state_type"] for r in new}
        if len(new) == 3 and all(s == "COMPLETED" for s in states.values()):
            break
        assert not any(s in ("FAILED", "CRASHED") for s in states.values()), states
        assert time.monotonic() < deadline, f"runs not completed: {states}"
        time.sleep(2)

    revisions = sorted(str(r["parameters"].get("dataset_revision")) for r in new)
    assert revisions == ["None", "ev-42", "rest-1"]
    models = sorted((stack["root"] / "runs").glob("*/model/model.safetensors"))
    assert len(models) == 3
    saved = [json.loads((m.parent.parent / "settings.json").read_text()) for m in models]
    assert sorted(str(s["dataset"]["revision"]) for s in saved) == ["None", "ev-42", "rest-1"]


def test_invalid_parameters_are_refused_before_a_run(stack):
    before = len(flow_runs(stack))
    bad = {"settings": {"train": {"epochs": 0}}}
    cli = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", DEPLOYMENT, "--params", json.dumps(bad)],
        env=stack["env"], capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode != 0
    assert "epochs" in cli.stdout + cli.stderr
    status, body = api(stack["api"], "POST", f"/deployments/{deployment_id(stack)}/create_flow_run", {"parameters": bad})
    assert status in (409, 422), body
    assert len(flow_runs(stack)) == before


def test_watcher_emits_only_when_the_revision_changes(stack):
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.settings import DatasetSettings
    from flows.watcher import watch_dataset

    dataset = DatasetSettings(source=str(stack["watched"]))
    with temporary_settings({PREFECT_API_URL: stack["api"]}):
        first = watch_dataset(dataset=dataset, name="e2e-watch")
        second = watch_dataset(dataset=dataset, name="e2e-watch")
        with (stack["watched"] / "train.jsonl").open("a") as fh:
            fh.write(json.dumps({"tokens": ["New", "York"], "ner_tags": [5, 6]}) + "\n")
        third = watch_dataset(dataset=dataset, name="e2e-watch")
        EventsWorker.drain_all()
    assert (first.emitted, second.emitted, third.emitted) == (False, False, True)
    assert third.previous == first.revision != third.revision

    flt = {"filter": {"event": {"name": ["nerflow.dataset.updated"]}, "resource": {"id": ["nerflow.dataset.e2e-watch"]}}}
    deadline = time.monotonic() + 30
    while True:
        status, page = api(stack["api"], "POST", "/events/filter", flt)
        assert status == 200, page
        if page["events"]:
            break
        assert time.monotonic() < deadline, "the event did not reach the server"
        time.sleep(1)
    (event,) = page["events"]
    assert event["payload"]["revision"] == third.revision and event["payload"]["previous_revision"] == first.revision


def test_pool_kinds_from_templates(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pools import create_pool

    with temporary_settings({PREFECT_API_URL: stack["api"]}):
        for kind in ("docker", "kubernetes"):
            assert create_pool(f"gpu-{kind}", kind) == "created"
    status, docker = api(stack["api"], "GET", "/work_pools/gpu-docker")
    variables = docker["base_job_template"]["variables"]["properties"]
    assert docker["type"] == "docker"
    kwargs = variables["container_create_kwargs"]["default"]
    assert kwargs["device_requests"][0]["Capabilities"] == [["gpu"]] and kwargs["shm_size"]
    assert any(v.endswith("/.cache/huggingface") for v in variables["volumes"]["default"])
    status, k8s = api(stack["api"], "GET", "/work_pools/gpu-kubernetes")
    manifest = k8s["base_job_template"]["job_configuration"]["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "{{ gpus_per_pod }}"}
    assert manifest["spec"]["template"]["spec"]["tolerations"] == "{{ tolerations }}"
    status, process = api(stack["api"], "GET", "/work_pools/gpu")
    assert process["base_job_template"]["variables"]["properties"]["working_dir"]["default"] == str(stack["root"] / "work")
