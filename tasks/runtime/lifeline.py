"""Processes that die with the process that started them, however it dies.

A training run under torchrun is a tree: the flow process, torchrun, one process per rank (each in a
session of its own, so a signal to the flow's process group does not reach them). When the kernel's
OOM killer, a preemption or `kill -9` takes the flow process, nothing runs to stop the rest: they go
on writing checkpoints and a model into a run folder whose lock is already free. So every child that
must not outlive its parent asks the kernel to kill it when the parent goes (Linux's
PR_SET_PDEATHSIG, kept across exec), and checks the parent is still the one it was started by (it
may have died before the request). Elsewhere a thread polls the parent instead.

`lifeline_command(cmd)` wraps a command: `python -m nerflow.tasks.runtime.lifeline PARENT_PID -- CMD...` makes the
request, then execs CMD (same process, same pid), with NERFLOW_LIFELINE_PID set so CMD's own children
(torchrun's ranks) can tie themselves to it with `die_with_parent()`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
LIFELINE_PID = "NERFLOW_LIFELINE_PID"


def die_with_parent(parent_pid: int | None = None) -> None:
    """Be killed (SIGKILL) when the parent process exits; exit at once if it already has, or if the
    parent is no longer `parent_pid` (re-parented to an init process)."""
    parent_pid = parent_pid or os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # gone before the request: nobody would ever stop this process
        os._exit(137)


def _watch_parent(parent_pid: int, every_s: float = 1.0) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(137)

    threading.Thread(target=watch, name="nerflow-lifeline", daemon=True).start()


def tie_to_lifeline() -> None:
    """In a child of a lifeline-wrapped command (a torchrun rank): die with that command."""
    if pid := os.environ.get(LIFELINE_PID):
        die_with_parent(int(pid))


def lifeline_command(cmd: list[str]) -> list[str]:
    """`cmd`, started so that it dies with this process (see the module docstring)."""
    return [sys.executable, "-m", "nerflow.tasks.runtime.lifeline", str(os.getpid()), "--", *cmd]


def main(argv: list[str]) -> None:
    parent, separator, cmd = int(argv[0]), argv[1], argv[2:]
    if separator != "--" or not cmd:
        raise SystemExit("usage: python -m nerflow.tasks.runtime.lifeline PARENT_PID -- COMMAND [ARGS...]")
    die_with_parent(parent)
    os.environ[LIFELINE_PID] = str(os.getpid())
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
