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
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import SAMPLE_DIR
from serve_stack import (
    AUTH,
    TRAINING,
    api,
    deployment_id,
    deployment_spec,
    free_port,
    read_run,
    start_serve,
    stop_serve,
    wait_for,
)

pytestmark = pytest.mark.slow  # a real Prefect server, work pool, deployments and worker

DEPLOYMENT = TRAINING


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("stack")
    watched = shutil.copytree(SAMPLE_DIR, root / "watched-data")
    spec = deployment_spec(root, tiny_bert)
    next(d for d in spec["deployments"] if d["name"] == "wikiann-bn-watcher")["parameters"]["dataset"] = {
        "source": str(watched)
    }
    proc, port = start_serve(
        root,
        spec,
        {
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        },
    )
    base = f"http://127.0.0.1:{port}/api"
    child_env = {
        **os.environ,
        "PREFECT_API_URL": base,
        "PREFECT_HOME": str(root / "client-home"),
        "PREFECT_API_AUTH_STRING": AUTH,
    }
    with AlertReceiver() as alerts:
        created = subprocess.run(
            [sys.executable, "-m", "nerflow.flows.cli.main", "alerts", "create", "--webhook", alerts.url],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0 and "custom-webhook/nerflow-alerts" in created.stdout, created.stderr
        yield {
            "api": base,
            "root": root,
            "env": child_env,
            "watched": watched,
            "proc": proc,
            "tiny_bert": tiny_bert,
            "alerts": alerts,
        }

    assert stop_serve(proc) == 0
    worker_log = (root / "work" / "worker.log").read_text()
    assert "Worker" in worker_log


class AlertReceiver:
    """A local HTTP endpoint that keeps every JSON body POSTed to it (the alert webhook)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def about(self, run_name: str) -> list[dict]:
        return [a for a in self.received if f"run: {run_name}\n" in a.get("body", "")]

    def __enter__(self):
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def flow_runs(stack, **state_filter) -> list[dict]:
    body = {"deployments": {"id": {"any_": [deployment_id(stack)]}}, "sort": "EXPECTED_START_TIME_ASC"}
    if state_filter:
        body["flow_runs"] = {"state": {"type": {"any_": state_filter["types"]}}}
    status, runs = api(stack["api"], "POST", "/flow_runs/filter", body)
    assert status == 200, runs
    return runs


def test_the_api_requires_its_credentials(stack):
    assert api(stack["api"], "POST", "/flows/filter", {}, auth=None)[0] == 401
    assert api(stack["api"], "POST", "/flows/filter", {})[0] == 200
    assert api(stack["api"], "GET", "/health", auth=None)[0] == 200  # probes stay open


def test_deployment_shape(stack):
    status, dep = api(stack["api"], "GET", f"/deployments/name/{DEPLOYMENT}")
    assert dep["work_pool_name"] == "gpu" and dep["enforce_parameter_schema"] is True
    # One training at a time, held by the work queue (no lease a server restart could lose).
    assert dep["work_queue_name"] == "training" and dep.get("global_concurrency_limit") is None
    status, queue = api(stack["api"], "GET", "/work_pools/gpu/queues/training")
    assert status == 200 and queue["concurrency_limit"] == 1
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
        [sys.executable, "-m", "prefect", "deployment", "run", DEPLOYMENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    status, rest_run = api(
        stack["api"],
        "POST",
        f"/deployments/{deployment_id(stack)}/create_flow_run",
        {"parameters": {"dataset_revision": "rest-1"}},
    )
    assert status == 201, rest_run

    event = subprocess.run(
        [sys.executable, "-m", "nerflow.flows.cli.main", "trigger", "wikiann-bn", "--revision", "ev-42"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
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

    assert not [a for r in new for a in stack["alerts"].about(r["name"])]  # successful runs alert nobody
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
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode != 0
    assert "epochs" in cli.stdout + cli.stderr
    status, body = api(
        stack["api"], "POST", f"/deployments/{deployment_id(stack)}/create_flow_run", {"parameters": bad}
    )
    assert status in (409, 422), body
    assert len(flow_runs(stack)) == before


def test_watcher_emits_only_when_the_revision_changes(stack):
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from nerflow.flows.watcher import watch_dataset
    from nerflow.tasks.settings import DatasetSettings

    dataset = DatasetSettings(source=str(stack["watched"]))
    with temporary_settings({PREFECT_API_URL: stack["api"], PREFECT_API_AUTH_STRING: AUTH}):
        first = watch_dataset(dataset=dataset, name="e2e-watch")
        second = watch_dataset(dataset=dataset, name="e2e-watch")
        with (stack["watched"] / "train.jsonl").open("a") as fh:
            fh.write(json.dumps({"tokens": ["New", "York"], "ner_tags": [5, 6]}) + "\n")
        third = watch_dataset(dataset=dataset, name="e2e-watch")
        EventsWorker.drain_all()
    assert (first.emitted, second.emitted, third.emitted) == (False, False, True)
    assert third.previous == first.revision != third.revision

    flt = {
        "filter": {"event": {"name": ["nerflow.dataset.updated"]}, "resource": {"id": ["nerflow.dataset.e2e-watch"]}}
    }
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
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from nerflow.flows.cli.pools import create_pool

    with temporary_settings({PREFECT_API_URL: stack["api"], PREFECT_API_AUTH_STRING: AUTH}):
        for kind in ("docker", "kubernetes"):
            assert create_pool(f"gpu-{kind}", kind, fixed={"image": "registry.team/nerflow:1"}) == "created"
    status, docker = api(stack["api"], "GET", "/work_pools/gpu-docker")
    assert docker["type"] == "docker"
    fixed = docker["base_job_template"]["job_configuration"]
    assert fixed["image"] == "registry.team/nerflow:1" and fixed["privileged"] is False
    kwargs = fixed["container_create_kwargs"]
    assert kwargs["device_requests"][0]["Capabilities"] == [["gpu"]] and kwargs["shm_size"]
    assert any(v.endswith("/.cache/huggingface") for v in fixed["volumes"])
    assert set(docker["base_job_template"]["variables"]["properties"]) == {"name", "stream_output", "mem_limit"}
    status, k8s = api(stack["api"], "GET", "/work_pools/gpu-kubernetes")
    manifest = k8s["base_job_template"]["job_configuration"]["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus_per_pod }}"
    assert (
        container["image"] == "registry.team/nerflow:1"
        and manifest["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    )
    status, process = api(stack["api"], "GET", "/work_pools/gpu")
    assert process["base_job_template"]["job_configuration"]["working_dir"] == str(stack["root"] / "work")
    assert process["base_job_template"]["variables"]["additionalProperties"] is False


# ------------------------------------------------------------------------------------- bad input, bursts


def test_a_run_started_through_the_api_with_bad_data_fails_with_the_message_as_its_state(stack, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text('{"tokens": ["John", "lives", "here"], "ner_tags": [1, 0]}\n')
    (folder / "labels.txt").write_text("O\nB-PER\nI-PER\n")
    settings = deployment_spec(stack["root"], stack["tiny_bert"])["deployments"][0]["parameters"]["settings"]
    settings["dataset"] = {"source": str(folder)}
    status, run = api(
        stack["api"],
        "POST",
        f"/deployments/{deployment_id(stack)}/create_flow_run",
        {"parameters": {"settings": settings}},
    )
    assert status == 201, run
    final = wait_for(
        "the run to fail",
        lambda: (r := read_run(stack, run["id"]))["state_type"] in ("FAILED", "COMPLETED", "CRASHED") and r,
    )
    assert final["state_type"] == "FAILED" and final["state"]["name"] == "Invalid input"
    assert (
        "train.jsonl, split 'train', row 0 (line 1), field 'ner_tags': 2 tags for 3 words" in final["state"]["message"]
    )
    # One alert, with the run, the failed task, the first line of the error and a link to the run.
    (alert,) = wait_for("the alert", lambda: stack["alerts"].about(final["name"]), timeout_s=60)
    body = alert["body"].splitlines()
    assert alert["subject"] == f"nerflow run {final['name']} invalid input"
    assert "failed task: ingest" in body and "error: dataset validation failed (3 problem(s)):" in body
    assert any(line.startswith("link: http://127.0.0.1:") and run["id"] in line for line in body)
    time.sleep(3)
    assert len(stack["alerts"].about(final["name"])) == 1


BURST = 2  # events for one revision: one run trains, the other finds it handled


def test_a_burst_of_events_for_one_revision_runs_every_run_and_trains_once(stack):
    before = {r["id"] for r in flow_runs(stack)}
    burst = (
        "from prefect.events.worker import EventsWorker\n"
        "from nerflow.flows.watcher import emit_dataset_updated\n"
        f"for _ in range({BURST}):\n"
        "    emit_dataset_updated('wikiann-bn', 'burst-1')\n"
        "EventsWorker.drain_all()\n"
    )
    subprocess.run([sys.executable, "-c", burst], env=stack["env"], check=True, timeout=120)
    busy_at_once = 0
    deadline = time.monotonic() + 600
    while True:
        runs = [
            r
            for r in flow_runs(stack)
            if r["id"] not in before and r["parameters"].get("dataset_revision") == "burst-1"
        ]
        busy_at_once = max(busy_at_once, sum(r["state_type"] in ("PENDING", "RUNNING") for r in runs))
        if len(runs) == BURST and all(r["state_type"] == "COMPLETED" for r in runs):
            break
        assert not [r for r in runs if r["state_type"] in ("FAILED", "CRASHED", "CANCELLED")], [
            r["state"] for r in runs
        ]
        assert time.monotonic() < deadline, f"{len(runs)} runs, states {sorted(r['state_type'] for r in runs)}"
        time.sleep(1)
    assert busy_at_once <= 1  # the training queue's concurrency limit held
    status, task_runs = api(
        stack["api"],
        "POST",
        "/task_runs/filter",
        {"flow_runs": {"id": {"any_": [r["id"] for r in runs]}}, "limit": 200},
    )
    trained = [
        t
        for t in task_runs
        if t["name"].startswith("train-") and t["state_type"] == "COMPLETED" and t["state"]["name"] == "Completed"
    ]
    assert len(trained) <= 1
    assert sum("already handled" in (r["state"]["message"] or "") for r in runs) >= BURST - 1


def test_pushed_hub_and_minio_changes_start_one_run_each_and_nothing_else_does(stack):
    """`nerflow hooks` against the stack: deliveries as the Hub and MinIO send them, through the
    training deployment's trigger from deployments/prefect.yaml."""
    from test_hooks import SECRET, hub_payload, minio_payload, s3_record

    root = stack["root"]
    config = root / "hooks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hub": {"datasets": {"unimelb-nlp/wikiann": "wikiann-bn"}},
                "s3": {"datasets": [{"bucket": "datasets", "prefix": "wikiann-bn/", "dataset": "wikiann-bn"}]},
            }
        )
    )
    port = free_port()
    env = {**stack["env"], "NERFLOW_HUB_WEBHOOK_SECRET": SECRET, "NERFLOW_S3_WEBHOOK_SECRET": SECRET}
    cmd = [sys.executable, "-m", "nerflow.flows.cli.main", "hooks", "--config", str(config), "--port", str(port)]
    # Started runs wait in the paused training queue: what they would train is tested elsewhere.
    assert api(stack["api"], "PATCH", "/work_pools/gpu/queues/training", {"is_paused": True})[0] == 204
    hooks = subprocess.Popen(
        [*cmd, "--state-dir", str(root / "hooks")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert "listening on http://127.0.0.1:" in hooks.stdout.readline()
        url = f"http://127.0.0.1:{port}"

        def deliver(path, body, headers):
            request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as e:
                return e.code

        hub, s3 = {"X-Webhook-Secret": SECRET}, {"Authorization": f"Bearer {SECRET}"}
        sha, etag = "a" * 40, "e" * 32
        assert deliver("/hub", hub_payload(sha=sha), hub) == 200
        assert deliver("/s3", minio_payload(s3_record(etag=etag)), s3) == 200
        refused = {
            "bad-secret": deliver("/hub", hub_payload(sha="b" * 40), {"X-Webhook-Secret": "guess"}),
            "unmapped": deliver("/hub", hub_payload(name="someone/else", sha="c" * 40), hub),
            "model-repo": deliver("/hub", hub_payload(kind="model", sha="d" * 40), hub),
            "malformed": deliver("/hub", {"repo": {"headSha": "f" * 40}}, hub),
            "replay": deliver("/hub", hub_payload(sha=sha), hub),
        }
        assert refused == {"bad-secret": 401, "unmapped": 422, "model-repo": 200, "malformed": 400, "replay": 200}

        def runs_for(revision):
            return [r for r in flow_runs(stack) if r["parameters"].get("dataset_revision") == revision]

        wait_for("a run per pushed revision", lambda: runs_for(sha) and runs_for(etag), timeout_s=120)
        time.sleep(10)  # what the trigger would have started for the refused deliveries has started by now
        assert len(runs_for(sha)) == 1 and len(runs_for(etag)) == 1
        assert [r for c in ("b", "c", "d", "f") for r in runs_for(c * 40)] == []
        for run in runs_for(sha) + runs_for(etag):
            assert run["state_type"] == "SCHEDULED", run["state"]  # never picked up from the paused queue
            assert api(stack["api"], "DELETE", f"/flow_runs/{run['id']}")[0] == 204
    finally:
        api(stack["api"], "PATCH", "/work_pools/gpu/queues/training", {"is_paused": False})
        hooks.terminate()
        log = hooks.communicate(timeout=30)[1]
    assert SECRET not in log and log.count("POST /hub") == 6 and log.count("POST /s3") == 1
