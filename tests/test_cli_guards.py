"""`nerflow train` as a user meets it, in real processes: bad input gives one message and exit code 2
(the traceback only in the run's log), two runs never write one folder, concurrent runs share a cold
cache safely, and a first local run records itself on its own temporary server and reaches nothing
beyond 127.0.0.1."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from prefect_db import seeded_home, seeded_test_harness

pytestmark = pytest.mark.slow  # nerflow train processes, each with a Prefect server


def nerflow_train(
    config: Path, env_update: dict | None = None, drop: tuple = (), timeout: int = 600, background: bool = False
):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", *drop)} | (env_update or {})
    cmd = [sys.executable, "-m", "nerflow.flows.cli.main", "train", "--config", str(config)]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, settings) -> Path:
    config = tmp_path / f"run-{os.urandom(3).hex()}.yaml"
    config.write_text(json.dumps(settings.model_dump(mode="json")))  # JSON is YAML
    return config


def bad_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "bad-data"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text('{"tokens": ["John", "lives", "here"], "ner_tags": [1, 0]}\n')
    (folder / "labels.txt").write_text("O\nB-PER\nI-PER\n")
    return folder


def test_bad_rows_are_one_message_and_exit_code_2_with_the_traceback_in_the_run_log(tiny_settings, tmp_path):
    config = write_config(tmp_path, tiny_settings(dataset={"source": str(bad_dataset(tmp_path))}))
    home = seeded_home(tmp_path / "prefect-home")
    out = nerflow_train(config, {"PREFECT_HOME": str(home)})
    console = out.stdout + out.stderr
    assert out.returncode == 2, console[-3000:]
    assert "nerflow: dataset validation failed (3 problem(s))" in out.stderr
    assert "train.jsonl, split 'train', row 0 (line 1), field 'ner_tags': 2 tags for 3 words" in out.stderr
    assert console.count("2 tags for 3 words") == 1  # said once: not by Prefect's lines, then nerflow's
    assert "Traceback" not in console and "View at" not in console
    with sqlite3.connect(home / "prefect.db") as db:
        (state, message) = db.execute(
            "SELECT s.name, s.message FROM flow_run f JOIN flow_run_state s ON s.id = f.state_id"
        ).fetchone()
        logs = [m for (m,) in db.execute("SELECT message FROM log")]
    assert state == "Invalid input" and message.startswith("dataset validation failed")
    assert any("Traceback" in m and "DatasetValidationError" in m for m in logs)  # the whole story, in the UI


def test_broken_labels_are_refused_before_any_server_starts(tiny_settings, tmp_path):
    folder = bad_dataset(tmp_path)
    (folder / "labels.txt").write_text("O\nB-PER\nI-PER\nB-PER\n")
    out = nerflow_train(write_config(tmp_path, tiny_settings(dataset={"source": str(folder)})))
    assert out.returncode == 2
    assert "labels.txt, line 4: label 'B-PER' repeats line 2" in out.stderr
    assert "Starting temporary Prefect server" not in out.stderr and "Traceback" not in out.stdout + out.stderr


def test_one_writer_per_run_folder_and_a_cold_cache_shared_safely(tiny_settings, tmp_path):
    """Three runs start together on one output folder and an empty cache: two with the same run name
    (one must be refused, never two writers) and one with another name (it shares the cache). They
    run as on one machine with a configured API: one Prefect server, one PREFECT_HOME (its result
    folder holds the cache records), fresh, so no earlier test's records answer for them."""
    from prefect.settings import get_current_settings

    same = write_config(tmp_path, tiny_settings(run_name="same", train={"epochs": 1}))
    other = write_config(tmp_path, tiny_settings(run_name="other", train={"epochs": 1}))
    with seeded_test_harness():
        api = {"PREFECT_API_URL": get_current_settings().api.url, "PREFECT_HOME": str(seeded_home(tmp_path / "home"))}
        procs = [nerflow_train(c, api, background=True) for c in (same, same, other)]
        outcomes = [(p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes[:2])
    assert codes == [0, 2], [o[2][-2000:] for o in outcomes]
    refused = next(err for code, _, err in outcomes[:2] if code == 2)
    assert "is in use by run 'same'" in refused and "Traceback" not in refused
    assert outcomes[2][0] == 0, outcomes[2][2][-2000:]

    from nerflow.tasks.runtime.files import is_sealed

    runs = tmp_path / "runs"  # tiny_settings' output folder, shared by the three
    assert is_sealed(runs / "same" / "model") and is_sealed(runs / "other" / "model")
    (tokenized,) = (runs / ".cache" / "tokenized").iterdir()  # one entry, written once, complete
    assert is_sealed(tokenized)
    assert not [p for p in runs.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


SOCKET_GUARD = textwrap.dedent(
    """
    # Loaded by every Python process of the test run (PYTHONPATH): records and refuses any connection
    # or name lookup beyond the loopback interface.
    import ipaddress, os, socket

    _LOG = os.environ["NERFLOW_NET_LOG"]
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _loopback(host):
        if host in ("localhost", "", None) or isinstance(host, bytes):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def _refuse(what):
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()} {what}\\n")
        raise ConnectionRefusedError(f"test: no network beyond 127.0.0.1 ({what})")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse(f"connect {address}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse(f"connect_ex {address}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            _refuse(f"getaddrinfo {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    """
)


def test_a_first_local_run_has_its_own_temporary_server_and_reaches_nothing_beyond_loopback(tiny_settings, tmp_path):
    """The demo's kind of run on a machine that never ran Prefect (an empty PREFECT_HOME; local data, a
    local checkpoint) with every offline and no-telemetry variable removed: `nerflow train` starts a
    temporary server on 127.0.0.1 while it imports the pipeline, records the run and all its logs
    there and stops it before it exits; not one connection attempt or lookup leaves 127.0.0.1."""
    import socket

    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = tmp_path / "net.log"
    log.touch()
    home = tmp_path / "home"  # not seeded: the first run migrates its database
    env = {
        "PYTHONPATH": os.pathsep.join([str(guard), str(REPO)]),
        "NERFLOW_NET_LOG": str(log),
        "PREFECT_HOME": str(home),
    }
    quiet = (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "DO_NOT_TRACK",
    )
    out = nerflow_train(write_config(tmp_path, tiny_settings(run_name="own-server")), env, drop=quiet)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test F1" in out.stdout
    assert log.read_text() == "", log.read_text()[:2000]

    started = next(line for line in out.stderr.splitlines() if line.startswith("Starting temporary Prefect server on"))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(started.rsplit(":", 1)[1]))) != 0, "the temporary server still runs"
    with sqlite3.connect(home / "prefect.db") as db:
        runs = db.execute("SELECT id, state_name FROM flow_run").fetchall()
        assert [state for _, state in runs] == ["Completed"]
        logs = [m for (m,) in db.execute("SELECT message FROM log WHERE flow_run_id = ?", (runs[0][0],))]
    assert any(m.startswith("Finished in state Completed") for m in logs), logs[-5:]  # the flow's last log line
    assert any("model card written to" in m for m in logs)
    # The console is nerflow's: no third-party progress bars or load reports, a loss for every epoch.
    console = out.stdout + out.stderr
    for noise in ("Saving the dataset", "Writing model shards", "it/s]", "LOAD REPORT", "newly initialized"):
        assert noise not in console, noise
    assert "tagging scheme: IOB2" in console and "train loss n/a" not in console
    assert console.count("| train loss ") == 2  # tiny_settings trains 2 epochs
