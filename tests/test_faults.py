"""Faults on a running deployment stack, injected for real: the flow run's process killed (OOM, a
preempted node), the worker and the run's process killed with nothing left to report (a vanished
node), the server hung while a run trains. Each ends with the run completed, resumed from its last
checkpoint where it was interrupted, and nothing lost. Its own `nerflow serve` stack (server with
credentials, the gpu process pool, the deployments of deployments/prefect.yaml, a worker)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from serve_stack import (
    AUTH,
    api,
    deployment_spec,
    flow_run_processes,
    long_run,
    read_run,
    run_logs,
    sealed_checkpoints,
    server_answers,
    start_serve,
    stop_serve,
    wait_for,
)

pytestmark = pytest.mark.slow  # a real Prefect server, work pool, deployments and worker; real kills


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("faults")
    spec = deployment_spec(root, tiny_bert)
    spec["deployments"] = [
        d for d in spec["deployments"] if d["name"] in ("wikiann-bn", "sample-training", "crash-recovery")
    ]
    spec["deployments"][0]["schedules"], spec["deployments"][0]["triggers"] = [], []
    proc, port = start_serve(
        root, spec, {"PREFECT_SERVER_API_AUTH_STRING": AUTH, "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    )
    yield {"api": f"http://127.0.0.1:{port}/api", "root": root, "tiny_bert": tiny_bert, "proc": proc}
    assert stop_serve(proc) == 0


def test_a_training_run_killed_mid_epoch_is_restarted_once_and_resumes(stack):
    """SIGKILL of the flow run's process (an OOM kill, a preempted node): the worker reports the run
    Crashed, the crash-recovery deployment schedules the same flow run again, and it resumes from its
    last complete checkpoint in the same run folder. The run is of a training deployment other than
    wikiann-bn: recovery covers every deployment of the training flow."""
    run_id = long_run(stack, "killed-mid-epoch", "finetune_ner/sample-training")
    wait_for("a sealed checkpoint", lambda: sealed_checkpoints(stack, "killed-mid-epoch"))
    for pid in flow_run_processes(run_id):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        "the crash",
        lambda: read_run(stack, run_id)["run_count"] >= 2 or read_run(stack, run_id)["state_type"] == "CRASHED",
    )
    final = wait_for(
        "the restarted run", lambda: (r := read_run(stack, run_id))["state_type"] in ("COMPLETED", "FAILED") and r
    )
    assert final["state_type"] == "COMPLETED" and final["run_count"] == 2, "\n".join(
        [f"{final['state']['name']}: {final['state']['message']}", *run_logs(stack, run_id)[-15:]]
    )
    assert any(m.startswith("resuming training from") for m in run_logs(stack, run_id))
    (model,) = (stack["root"] / "runs").glob("*-killed-mid-epoch/model/model.safetensors")
    assert json.loads((model.parent.parent / "train_log.json").read_text())[-1]["epoch"] == 3.0


def test_a_run_whose_worker_and_process_vanish_is_found_by_its_missing_heartbeats_and_resumes(stack):
    """A node that vanishes: its worker and the run's process are killed (SIGKILL, worker first), so
    nothing reports the run and it stays Running. Its heartbeats stop; the crash-recovery deployment's
    proactive trigger notices, the run is scheduled again (the queue slot freed), `nerflow serve`'s
    restarted worker picks it up, and it resumes from its last checkpoint."""
    from serve_stack import HEARTBEAT_S, SILENT_AFTER_S

    run_id = long_run(stack, "vanished-node")
    wait_for("a sealed checkpoint", lambda: sealed_checkpoints(stack, "vanished-node"))
    os.kill(int((stack["root"] / "work" / "worker.pid").read_text()), signal.SIGKILL)
    for pid in flow_run_processes(run_id):
        os.kill(pid, signal.SIGKILL)
    time.sleep(HEARTBEAT_S / 2)
    assert read_run(stack, run_id)["state_type"] == "RUNNING"  # nothing was left to report it
    final = wait_for("the recovered run", lambda: (r := read_run(stack, run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and r,
                     timeout_s=SILENT_AFTER_S + HEARTBEAT_S + 300)  # fmt: skip
    assert final["state_type"] == "COMPLETED" and final["run_count"] == 2, "\n".join(
        [f"{final['state']['name']}: {final['state']['message']}", *run_logs(stack, run_id)[-15:]]
    )
    status, states = api(stack["api"], "GET", f"/flow_run_states/?flow_run_id={run_id}")
    assert any("after its heartbeats stopped" in (s.get("message") or "") for s in states), [
        s.get("message") for s in states
    ]
    assert any(m.startswith("resuming training from") for m in run_logs(stack, run_id))


def test_a_server_that_hangs_while_a_run_trains_is_killed_started_again_and_the_run_completes(stack):
    """SIGSTOP: the server is there but answers nothing, as a deadlocked or swapping one. `nerflow
    serve` notices from its failing health checks, kills it and starts another on the same database;
    the run in flight goes on through it and completes. (A server that exits is started again by the
    same supervisor as the worker above; test_serve.py covers both ways with real processes.)"""
    from nerflow.flows.cli.serve import HEALTH_EVERY_S, HEALTH_FAILURES

    run_id = long_run(stack, "server-restart")

    def state() -> dict:
        return {k: read_run(stack, run_id)[k] for k in ("state_type", "state_name", "run_count", "work_queue_name")}

    wait_for("training to start", lambda: sealed_checkpoints(stack, "server-restart"), describe=state)
    hung = int((stack["root"] / "work" / "server.pid").read_text())
    os.kill(hung, signal.SIGSTOP)
    try:
        wait_for("a new server", lambda: int((stack["root"] / "work" / "server.pid").read_text()) != hung,
                 timeout_s=HEALTH_EVERY_S * (HEALTH_FAILURES + 2) + 30)  # fmt: skip
    finally:
        if Path(f"/proc/{hung}").exists():
            os.kill(hung, signal.SIGCONT)
    assert not Path(f"/proc/{hung}").exists() or Path(f"/proc/{hung}/stat").read_text().split(")")[-1].split()[0] == "Z"
    wait_for("the new server to answer", lambda: server_answers(stack), timeout_s=120)
    final = wait_for(
        "the run",
        lambda: (r := read_run(stack, run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and r,
    )
    assert final["state_type"] == "COMPLETED" and final["run_count"] == 1, "\n".join(
        [f"{final['state']['name']}: {final['state']['message']}", *run_logs(stack, run_id)[-15:]]
    )
    assert list((stack["root"] / "runs").glob("*-server-restart/model/model.safetensors"))
