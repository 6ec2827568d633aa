"""`nerflow serve` (and `make serve`): a local Prefect server, the `gpu` pool, the deployments and a
worker, so a user can start runs from the UI. Everything listens on 127.0.0.1. With
PREFECT_SERVER_API_AUTH_STRING (user:password) in the environment the API requires it (HTTP basic
auth), and the worker and deploy step are given it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from flows.pools import create_pool

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PREFECT_FILE = REPO / "deployments" / "prefect.yaml"


def prefect_cli() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def wait_healthy(api_url: str, timeout_s: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no healthy Prefect server at {api_url} after {timeout_s:.0f} s")


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    return subprocess.Popen(
        [*prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def deploy(prefect_file: Path, env: dict[str, str], cwd: Path = REPO) -> None:
    subprocess.run(
        [*prefect_cli(), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_worker(pool: str, env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    return subprocess.Popen(
        [*prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen, grace_s: float = 15) -> int:
    """TERM, wait; TERM again (a backgrounded Prefect worker ignores the first), wait; then KILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGTERM, grace_s / 2), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def temporary_server_when_needed() -> Iterator[Callable[[], AbstractContextManager]]:
    """Prefect's temporary local server for a run when no Prefect API is configured, started early.

    Left to itself, a flow run with no PREFECT_API_URL imports the server's code in-process and then
    waits for the server to boot before its first task. Started here, the
    same server (uvicorn with Prefect's app factory and the flags Prefect's SubprocessASGIServer sets,
    on 127.0.0.1) boots in its own process while the caller imports the pipeline. Usage:

        with temporary_server_when_needed() as use_server:
            from flows.finetune import finetune_ner   # imported while the server boots
            with use_server():                       # waits until healthy, points Prefect at it
                finetune_ner(...)

    With an API configured (or ephemeral servers disabled) `use_server()` changes nothing."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings, temporary_settings

    current = get_current_settings()
    if current.api.url or not current.server.ephemeral.enabled:
        yield nullcontext
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # Nothing leaves the machine: no analytics from this server unless the user asked for them.
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"], env=env, start_new_session=True
    )
    print(f"Starting temporary Prefect server on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

    @contextmanager
    def use_server() -> Iterator[None]:
        wait_healthy(api_url, timeout_s=max(60, current.server.ephemeral.startup_timeout_seconds), proc=proc)
        # No UI URL: this server has no UI and is gone a second after the run, so no "View at" link.
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_UI_URL: ""}):
            try:
                yield
            finally:  # send buffered logs and events while the server is still there
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all()
                EventsWorker.drain_all()

    try:
        yield use_server
    finally:
        stop_process(proc)
        print(f"Stopped temporary Prefect server on http://127.0.0.1:{port}", file=sys.stderr, flush=True)


# Leases of deployment concurrency limits on disk (PREFECT_HOME/concurrency_leases), not in the
# server's memory: a restarted server still knows them, so renewing one does not fail with HTTP 410.
PERSISTENT_LEASES = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}
MAX_RESTARTS = 5  # of the server or the worker, over the life of one `nerflow serve`


class Supervised:
    """A child process that is started again (up to MAX_RESTARTS times) when it exits on its own."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen], pid_file: Path) -> None:
        self.name, self.start, self.pid_file, self.restarts = name, start, pid_file, 0
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen:
        proc = self.start()
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def check(self) -> bool:
        """Restart the process if it died; False once it may not be restarted any more."""
        code = self.proc.poll()
        if code is None:
            return True
        if self.restarts >= MAX_RESTARTS:
            print(f"the {self.name} exited (code {code}) {self.restarts} times; giving up", file=sys.stderr, flush=True)
            return False
        self.restarts += 1
        print(f"the {self.name} exited (code {code}); starting it again ({self.restarts} of {MAX_RESTARTS})", file=sys.stderr, flush=True)
        self.proc = self._launch()
        return True

    def stop(self) -> None:
        stop_process(self.proc)
        self.pid_file.unlink(missing_ok=True)


def serve(port: int, pool: str, prefect_file: Path, workdir: Path, home: Path | None) -> int:
    """Start server, pool, deployments and worker; keep the server and the worker running (a crashed
    one is started again: runs in flight go on) until SIGINT/SIGTERM; then stop them in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**PERSISTENT_LEASES, **os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api_url}
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    if auth := env.get("PREFECT_SERVER_API_AUTH_STRING"):
        env["PREFECT_API_AUTH_STRING"] = auth  # the worker, `prefect deploy` and this process's own calls
    server = Supervised("Prefect server", lambda: start_server(port, env, workdir / "server.log"), workdir / "server.pid")
    worker = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        wait_healthy(api_url, proc=server.proc)
        set_up_deployments(api_url, env, pool, prefect_file, workdir)
        worker = Supervised("worker", lambda: start_worker(pool, env, workdir / "worker.log", workdir), workdir / "worker.pid")
        print(f"Prefect UI: http://127.0.0.1:{port}", flush=True)
        print(f"work pool {pool!r} (process) with a worker; runs write under {workdir}", flush=True)
        print(
            "deployments: finetune_ner/wikiann-bn, watch_dataset/wikiann-bn-watcher, recover_crashed_run/crash-recovery, "
            "predict_ner/batch; "
            "Ctrl-C stops everything",
            flush=True,
        )
        while not stop.wait(1):
            if not (server.check() and worker.check()):
                return 1
        return 0
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def set_up_deployments(api_url: str, env: dict[str, str], pool: str, prefect_file: Path, workdir: Path) -> None:
    """The process pool (runs start in workdir) with its training queue, then `prefect deploy --all`."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: env.get("PREFECT_API_AUTH_STRING")}):
        create_pool(pool, "process", overwrite=True, defaults={"working_dir": str(workdir)})
    deploy(prefect_file, env)
