"""`nerflow serve` keeps its server and worker up: a process that dies is started again after a backoff
that grows while it keeps dying at once, with no limit on how often; one that stops answering its
health check is killed and started again. Real child processes, a clock the test moves."""

from __future__ import annotations

import subprocess
import sys

from nerflow.flows.cli.serve import (
    FIRST_BACKOFF_S,
    HEALTH_EVERY_S,
    HEALTH_FAILURES,
    MAX_BACKOFF_S,
    STABLE_AFTER_S,
    Supervised,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exits_at_once() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)


def runs_on() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )  # as serve starts them


def test_a_process_that_keeps_dying_is_restarted_with_a_growing_backoff_and_no_cap(tmp_path, capsys):
    clock = Clock()
    child = Supervised("flaky server", exits_at_once, tmp_path / "pid", clock=clock)
    waits = []
    for _ in range(9):  # more than the five restarts the supervisor used to allow in a lifetime
        child.proc.wait()
        child.check()
        waits.append(child.restart_at - clock.now)
        clock.now = child.restart_at
        child.check()
    assert child.restarts == 9
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    child.proc.wait()
    clock.now += STABLE_AFTER_S  # one that ran a while comes back at once
    child.started_at = clock.now - STABLE_AFTER_S
    child.check()
    assert child.restart_at == clock.now and child.backoff == FIRST_BACKOFF_S
    assert "exited (code 0); starting it again in 0 s" in capsys.readouterr().err


def test_a_process_that_stops_answering_is_killed_and_started_again(tmp_path):
    clock, answering = Clock(), [True]
    child = Supervised("server", runs_on, tmp_path / "pid", healthy=lambda: answering[0], clock=clock)
    first = child.proc
    try:
        for _ in range(4):
            clock.now += HEALTH_EVERY_S
            child.check()
        assert first.poll() is None  # healthy: left alone
        answering[0] = False
        for _ in range(HEALTH_FAILURES):
            clock.now += HEALTH_EVERY_S
            child.check()
        assert first.poll() == -9  # killed: a hung process may not act on TERM
        clock.now = child.restart_at
        child.check()
        assert child.proc is not first and child.proc.poll() is None
        assert (tmp_path / "pid").read_text().strip() == str(child.proc.pid)
    finally:
        child.stop()
