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


class _InputErrorsWithoutTraceback(logging.Formatter):
    """Formats records as the wrapped formatter does, but without the traceback of an InputError:
    on the console a bad input is its message; the run's log in the Prefect UI keeps the traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        from tasks.errors import InputError

        if not (record.exc_info and isinstance(record.exc_info[1], InputError)):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


INVALID_INPUT = "Invalid input"  # the name of a run's Failed state when its data or settings are unusable


def invalid_input(exc: Exception):
    """The Failed state of a run whose data or settings cannot be used: the message is the state's,
    the traceback goes to the run's log only."""
    from prefect.logging import get_run_logger
    from prefect.states import Failed

    get_run_logger().error("%s", exc, exc_info=True)
    return Failed(name=INVALID_INPUT, message=str(exc))


def quiet_input_errors_on_console() -> None:
    """Drop InputError tracebacks from Prefect's console handlers (idempotent)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _InputErrorsWithoutTraceback):
                handler.setFormatter(_InputErrorsWithoutTraceback(handler.formatter or logging.Formatter()))
