"""`nerflow serve` (and `make serve`): a local Prefect server, the `gpu` pool, the deployments and a
worker, so a user can start runs from the UI. The server and the worker die with `nerflow serve`,
however it ends (nerflow.tasks.runtime.lifeline). Everything listens on 127.0.0.1, and the API requires
credentials (HTTP basic auth): PREFECT_SERVER_API_AUTH_STRING (user:password) when the operator sets
it, else generated ones kept in a file only the operator can read. Without them any local user could
read every Secret block through the API. The temporary server behind a local `nerflow train` gets
one-off credentials of its own for the same reason."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from nerflow.deployments import PREFECT_FILE
from nerflow.flows.cli.pools import create_pool
from nerflow.tasks.runtime.files import atomic_write_text
from nerflow.tasks.runtime.lifeline import lifeline_command

DEFAULT_PREFECT_FILE = PREFECT_FILE


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
        lifeline_command([*prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=0o077,  # a database it creates (Secret blocks included) is readable by the operator only
    )


def deploy(prefect_file: Path, env: dict[str, str], cwd: Path = PREFECT_FILE.parent) -> None:
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
        lifeline_command([*prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"]),
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
        except ProcessLookupError:  # not the leader of a group of its own: signal it alone
            try:
                proc.send_signal(sig)
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
    waits for the server to boot before its first task. Started here, the same server boots in its own
    process while the caller imports the pipeline, on 127.0.0.1 and with one-off credentials that only
    this process knows (another local user reads no Secret block through it). Usage:

        with temporary_server_when_needed() as use_server:
            from nerflow.flows.finetune import finetune_ner   # imported while the server boots
            with use_server():                       # waits until healthy, points Prefect at it
                finetune_ner(...)

    With an API configured (or ephemeral servers disabled) `use_server()` changes nothing."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_UI_URL,
        get_current_settings,
        temporary_settings,
    )

    current = get_current_settings()
    if current.api.url or not current.server.ephemeral.enabled:
        yield nullcontext
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # One-off credentials: another local user could otherwise read every Secret block through this API.
    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or f"nerflow:{secrets.token_urlsafe(24)}"
    private_database(
        current.server.database.connection_url.get_secret_value() if current.server.database.connection_url else ""
    )
    proc = start_temporary_server(port, auth)
    print(f"Starting temporary Prefect server on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

    @contextmanager
    def use_server() -> Iterator[None]:
        wait_healthy(api_url, timeout_s=max(60, current.server.ephemeral.startup_timeout_seconds), proc=proc)
        # No UI URL: this server has no UI and is gone a second after the run, so no "View at" link.
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_UI_URL: "", PREFECT_API_AUTH_STRING: auth}):
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


def start_temporary_server(port: int, auth: str) -> subprocess.Popen:
    """uvicorn with Prefect's app factory and the flags Prefect's SubprocessASGIServer sets, on 127.0.0.1,
    requiring `auth`."""
    # Nothing leaves the machine: no analytics from this server unless the user asked for them.
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_API_AUTH_STRING": auth,  # in the environment, which only this user can read
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    return subprocess.Popen(
        lifeline_command(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
        ),  # gone with this process
        env=env,
        start_new_session=True,
        umask=0o077,  # the database it creates (Secret blocks included) is readable by this user only
    )


def private_database(url: str) -> None:
    """A SQLite database that already exists (Prefect's default, in PREFECT_HOME) made readable by its
    owner only: it holds the Secret blocks."""
    if url.startswith("sqlite") and ":///" in url:
        database = Path(url.split(":///", 1)[1])
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            if path.exists():
                path.chmod(0o600)


AUTH_FILE = "nerflow-api-auth"


def serve_credentials(home: Path) -> tuple[str, str]:
    """(user:password, where they come from) for the API of `nerflow serve`: the operator's
    PREFECT_SERVER_API_AUTH_STRING, else credentials generated once and kept in HOME/nerflow-api-auth,
    readable by the operator only, so the UI login stays the same across restarts."""
    if auth := os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return auth, "PREFECT_SERVER_API_AUTH_STRING"
    path = home / AUTH_FILE
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"nerflow:{secrets.token_urlsafe(24)}\n")
    path.chmod(0o600)
    return path.read_text().strip(), str(path)


# Leases of deployment concurrency limits on disk (PREFECT_HOME/concurrency_leases), not in the
# server's memory: a restarted server still knows them, so renewing one does not fail with HTTP 410.
PERSISTENT_LEASES = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}
# Restarts: right away after a process that ran a while, then waits that double for one that keeps
# dying at once (a port taken, a broken database), up to a minute; never a last time.
FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S = 1.0, 60.0, 120.0
# A server that does not answer its health check this many times in a row, HEALTH_EVERY_S apart, is
# hung (deadlocked, stopped, swapping): it is killed and started again.
HEALTH_EVERY_S, HEALTH_FAILURES = 5.0, 3


class Supervised:
    """A child process that is started again whenever it exits, or stops answering its health check,
    with a backoff between starts that fail fast, and no limit on how often."""

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen],
        pid_file: Path,
        healthy: Callable[[], bool] | None = None,
        clock=time.monotonic,
    ) -> None:
        self.name, self.start, self.pid_file, self.healthy, self.clock = name, start, pid_file, healthy, clock
        self.restarts, self.backoff, self.restart_at, self.failed_checks = 0, FIRST_BACKOFF_S, None, 0
        self.next_health_check = clock() + HEALTH_EVERY_S
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen:
        proc = self.start()
        self.started_at = self.clock()
        atomic_write_text(self.pid_file, f"{proc.pid}\n")  # a reader never sees it empty
        return proc

    def _say(self, message: str) -> None:
        print(f"the {self.name} {message}", file=sys.stderr, flush=True)

    def _hung(self) -> bool:
        if self.healthy is None or self.clock() < self.next_health_check:
            return False
        self.next_health_check = self.clock() + HEALTH_EVERY_S
        self.failed_checks = 0 if self.healthy() else self.failed_checks + 1
        return self.failed_checks >= HEALTH_FAILURES

    def check(self) -> None:
        """Restart the process if it died or hangs (after its backoff)."""
        now = self.clock()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart_at, self.restarts = None, self.restarts + 1
                self._say(f"starts again (restart {self.restarts})")
                self.proc = self._launch()
            return
        code = self.proc.poll()
        if code is None and self._hung():
            self._say(f"did not answer its health check {HEALTH_FAILURES} times in a row; killing it")
            self.proc.kill()  # a hung process may not act on TERM (a stopped one cannot)
            code = self.proc.wait()
        if code is None:
            return
        self.failed_checks = 0
        self.backoff = (
            FIRST_BACKOFF_S if now - self.started_at >= STABLE_AFTER_S else min(MAX_BACKOFF_S, self.backoff * 2)
        )
        self.restart_at = now + (0.0 if self.backoff == FIRST_BACKOFF_S else self.backoff)
        self._say(f"exited (code {code}); starting it again in {self.restart_at - now:.0f} s")

    def stop(self) -> None:
        stop_process(self.proc)
        self.pid_file.unlink(missing_ok=True)


def answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=HEALTH_EVERY_S) as resp:
            return resp.status == 200
    except OSError:
        return False


def serve(port: int, pool: str, prefect_file: Path, workdir: Path, home: Path | None) -> int:
    """Start server, pool, deployments and worker; keep the server and the worker running (one that
    dies or hangs is started again, however often: runs in flight go on) until SIGINT/SIGTERM; then
    stop them in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **PERSISTENT_LEASES,
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
    }
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    prefect_home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    private_database(env.get("PREFECT_API_DATABASE_CONNECTION_URL") or f"sqlite+aiosqlite:///{prefect_home}/prefect.db")
    auth, where = serve_credentials(prefect_home)
    # The server requires them; the worker, `prefect deploy` and this process's own calls send them.
    env = {k: v for k, v in env.items() if k != "PREFECT_SERVER_API_AUTH_STRING"} | {"PREFECT_API_AUTH_STRING": auth}
    server_env = env | {"PREFECT_SERVER_API_AUTH_STRING": auth}
    print(
        f"API auth on: user:password from {where}"
        + (" (readable by you only)" if where != "PREFECT_SERVER_API_AUTH_STRING" else ""),
        flush=True,
    )
    server = Supervised(
        "Prefect server",
        lambda: start_server(port, server_env, workdir / "server.log"),
        workdir / "server.pid",
        lambda: answers(api_url),
    )
    worker = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        wait_healthy(api_url, proc=server.proc)
        set_up_deployments(api_url, env, pool, prefect_file, workdir)
        worker = Supervised(
            "worker", lambda: start_worker(pool, env, workdir / "worker.log", workdir), workdir / "worker.pid"
        )
        print(f"Prefect UI: http://127.0.0.1:{port}", flush=True)
        print(f"work pool {pool!r} (process) with a worker; runs write under {workdir}", flush=True)
        print(f"deployments: {', '.join(deployment_names(prefect_file))}; Ctrl-C stops everything", flush=True)
        while not stop.wait(1):
            server.check()
            worker.check()
        return 0
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def deployment_names(prefect_file: Path) -> list[str]:
    """FLOW/DEPLOYMENT of each deployment in a prefect.yaml (nerflow's flows are named as their functions)."""
    import yaml

    spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    return [f"{d['entrypoint'].rsplit(':', 1)[-1]}/{d['name']}" for d in spec.get("deployments", [])]


def set_up_deployments(api_url: str, env: dict[str, str], pool: str, prefect_file: Path, workdir: Path) -> None:
    """The process pool (runs start in workdir) with its training queue, then `prefect deploy --all`."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: env.get("PREFECT_API_AUTH_STRING")}):
        create_pool(pool, "process", overwrite=True, fixed={"working_dir": str(workdir)})
    deploy(prefect_file, env)
