"""A `nerflow serve` stack for end-to-end tests: deployments pointed at the tiny BERT, a real server
(SQLite, 127.0.0.1, free port, a PREFECT_HOME of its own, its database migrated: prefect_db.py) and worker; stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SAMPLE_DIR
from nerflow.flows.cli.serve import free_port
from prefect_db import seeded_home

HEARTBEAT_S = 30  # flow-run heartbeats in the stack (Prefect's minimum), so a silent run is found in minutes
SILENT_AFTER_S = 75  # the crash-recovery deployment's proactive trigger: heartbeats missed for this long


def deployment_spec(root: Path, tiny_bert: Path) -> dict:
    """deployments/prefect.yaml with the training deployment pointed at the tiny BERT and the sample,
    a second training deployment (`sample-training`, no schedule or trigger of its own), and the
    crash-recovery trigger on silent runs waiting SILENT_AFTER_S instead of ten minutes."""
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    training = spec["deployments"][0]
    training["parameters"]["settings"] = {
        "dataset": {"source": str(SAMPLE_DIR), "max_train_samples": 48, "max_eval_samples": 16, "language": "en"},
        "base_model": {"name": str(tiny_bert)},
        "tokenize": {"max_length": 48},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
        "output_dir": str(root / "runs"),
    }
    second = {**training, "name": "sample-training", "schedules": [], "triggers": [], "tags": ["nerflow", "ner"]}
    spec["deployments"].insert(1, second)
    recovery = next(d for d in spec["deployments"] if d["name"] == "crash-recovery")
    for trigger in recovery["triggers"]:
        if trigger.get("posture") == "Proactive":
            trigger["within"] = SILENT_AFTER_S
    return spec


AUTH = "nerflow:e2e-" + os.urandom(6).hex()  # the API's user:password in the end-to-end stack


def auth_header(auth: str = AUTH) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def generated_auth(root: Path) -> str:
    """The credentials `nerflow serve` generated for a stack started without PREFECT_SERVER_API_AUTH_STRING."""
    from nerflow.flows.cli.serve import AUTH_FILE

    return (root / "prefect-home" / AUTH_FILE).read_text().strip()


def start_serve(root: Path, spec: dict, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Write the spec, start `nerflow serve` and wait until it prints the UI address. The worker's
    policy (the operator's) allows the test's temporary folders and the bundled sample. The worker asks
    for runs every 2 seconds (Prefect's default: 10), so a started run is picked up within seconds; each
    poll costs the server CPU time, about 1.5 seconds a minute at this rate."""
    prefect_file = root / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    seeded_home(root / "prefect-home")
    port = free_port()
    roots = os.pathsep.join([str(root.parent), str(SAMPLE_DIR)])
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2", "NERFLOW_ALLOWED_ROOTS": roots,
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S), **(extra_env or {})}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "nerflow.flows.cli.main",
        "serve",
        "--port",
        str(port),
        "--prefect-file",
        str(prefect_file),
        "--workdir",
        str(root / "work"),
        "--home",
        str(root / "prefect-home"),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Prefect UI:"):
            proc.startup_lines = lines  # what `nerflow serve` said before it was ready
            return proc, port
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
    pytest.fail("nerflow serve ended before it was ready:\n" + "".join(lines))


def stop_serve(proc: subprocess.Popen) -> int:
    """`nerflow serve` stops its worker (TERM, wait, TERM/KILL) and server on SIGTERM."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()


@contextmanager
def secured_stack(root: Path, tiny_bert: Path) -> Iterator[dict]:
    """`nerflow serve` as an operator starts it: no PREFECT_SERVER_API_AUTH_STRING, so it generates the
    credentials; the training deployment (no schedule, no trigger) and batch prediction."""
    spec = deployment_spec(root, tiny_bert)
    spec["deployments"] = [d for d in spec["deployments"] if d["name"] in ("wikiann-bn", "batch")]
    spec["deployments"][0]["schedules"], spec["deployments"][0]["triggers"] = [], []
    proc, port = start_serve(root, spec)
    auth = generated_auth(root)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_API_URL": f"{base}/api", "PREFECT_API_AUTH_STRING": auth, "PREFECT_HOME": str(root / "client-home")}  # fmt: skip
    try:
        yield {"base": base, "api": f"{base}/api", "auth": auth, "root": root, "env": env, "proc": proc,
               "settings": spec["deployments"][0]["parameters"]["settings"]}  # fmt: skip
    finally:
        assert stop_serve(proc) == 0


# --------------------------------------------------------------------------- the stack's API, as a client


def api(base: str, method: str, path: str, body=None, attempts: int = 5, auth: str | None = AUTH):
    """One JSON call (auth=None: without credentials); retried on 503, which a SQLite-backed server
    answers while its database is busy."""
    for attempt in range(attempts):
        status, payload = _call(base, method, path, body, auth)
        if status != 503:
            break
        time.sleep(1 + attempt)
    return status, payload


def _call(base: str, method: str, path: str, body=None, auth: str | None = AUTH):
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json", **(auth_header(auth) if auth else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def read_run(stack, run_id: str) -> dict:
    status, run = api(stack["api"], "GET", f"/flow_runs/{run_id}", auth=stack.get("auth", AUTH))
    assert status == 200, run
    return run


def wait_for(what: str, check, timeout_s: float = 300, every_s: float = 0.5, describe=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what} {describe()}"
        time.sleep(every_s)
    return found


def finished_run(stack, run_id: str, timeout_s: float = 300) -> dict:
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    return wait_for(
        f"run {run_id} to finish", lambda: (r := read_run(stack, run_id))["state_type"] in final and r, timeout_s
    )


def run_logs(stack, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
    status, logs = api(stack["api"], "POST", "/logs/filter", body, auth=stack.get("auth", AUTH))
    assert status == 200, logs
    return [entry["message"] for entry in logs]


TRAINING = "finetune_ner/wikiann-bn"


def deployment_id(stack, name: str = TRAINING) -> str:
    status, body = api(stack["api"], "GET", f"/deployments/name/{name}", auth=stack.get("auth", AUTH))
    assert status == 200, body
    return body["id"]


def long_run(stack, name: str, deployment: str = TRAINING) -> str:
    """A deployment run that trains long enough to be interrupted: 480 sentences, 3 epochs, batch 4
    (120 steps an epoch; a checkpoint after each)."""
    settings = deployment_spec(stack["root"], stack["tiny_bert"])["deployments"][0]["parameters"]["settings"]
    settings["dataset"] = {**settings["dataset"], "max_train_samples": 480}
    # A seed of its own: an identical earlier run would make this one a cache hit that trains nothing.
    settings["train"] = {**settings["train"], "epochs": 3, "batch_size": 4, "seed": zlib.crc32(name.encode()) % 10_000}
    status, run = api(
        stack["api"],
        "POST",
        f"/deployments/{deployment_id(stack, deployment)}/create_flow_run",
        {"name": name, "parameters": {"settings": settings}},
        auth=stack.get("auth", AUTH),
    )
    assert status == 201, run
    return run["id"]


def server_answers(stack) -> bool:
    try:
        return api(stack["api"], "GET", "/health")[0] == 200
    except OSError:  # connection refused while it starts
        return False


def sealed_checkpoints(stack, run_name: str) -> list:
    return sorted((stack["root"] / "runs").glob(f"*-{run_name}/checkpoints/checkpoint-*/.nerflow-complete.json"))


def flow_run_processes(run_id: str) -> list[int]:
    """Processes started for a flow run (the process worker passes PREFECT__FLOW_RUN_ID)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
