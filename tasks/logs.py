"""Where a step's log lines go: the Prefect run's log inside a flow or task run, else a module logger."""

from __future__ import annotations

import logging


def run_logger(fallback: logging.Logger) -> logging.Logger | logging.LoggerAdapter:
    """The run logger of the current Prefect flow or task run; `fallback` outside one (scripts, tests,
    torchrun worker processes)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return fallback
