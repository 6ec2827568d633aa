"""A `nerflow serve` stack for end-to-end tests: deployments pointed at the tiny BERT, a real server
(SQLite, 127.0.0.1, free port, fresh PREFECT_HOME) and worker; stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SAMPLE_DIR
from flows.serve import free_port


def deployment_spec(root: Path, tiny_bert: Path) -> dict:
    """deployments/prefect.yaml with the training deployment pointed at the tiny BERT and the sample."""
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    spec["deployments"][0]["parameters"]["settings"] = {
        "dataset": {"source": str(SAMPLE_DIR), "max_train_samples": 48, "max_eval_samples": 16, "language": "en"},
        "model": {"checkpoint": str(tiny_bert)},
        "tokenize": {"max_length": 48},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
        "output_dir": str(root / "runs"),
    }
    return spec


AUTH = "nerflow:e2e-" + os.urandom(6).hex()  # the API's user:password in the end-to-end stack


def auth_header() -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}


def start_serve(root: Path, spec: dict, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Write the spec, start `nerflow serve` and wait until it prints the UI address."""
    prefect_file = root / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    port = free_port()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1", **(extra_env or {})}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--prefect-file", str(prefect_file),
           "--workdir", str(root / "work"), "--home", str(root / "prefect-home")]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Prefect UI:"):
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
