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
        from nerflow.tasks.runtime.errors import InputError

        if not (record.exc_info and isinstance(record.exc_info[1], InputError)):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


# What quiet_third_party sets: each library reads its variable when it is first imported.
QUIET_ENVIRONMENT = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def quiet_third_party() -> None:
    """No progress bars or load reports from datasets, transformers and huggingface_hub (saving a
    dataset, writing model shards, weights a new head initialises) unless NERFLOW_VERBOSE=1: nerflow's
    own lines say what happens. Warnings and errors still show.

    Through the libraries' environment variables, so a run refused before any work (or one of
    torchrun's ranks, which inherits them) never imports datasets or transformers just to quiet them
    (about 1.5 CPU seconds); the ones this process already imported are quieted through their API."""
    import os
    import sys

    if os.environ.get("NERFLOW_VERBOSE", "").strip().lower() in ("1", "true", "yes"):
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


INVALID_INPUT = "Invalid input"  # the name of a run's Failed state when its data or settings are unusable


def invalid_input(exc: Exception):
    """The Failed state of a run whose data or settings cannot be used: the message is the state's,
    the traceback goes to the run's log only."""
    from prefect.logging import get_run_logger
    from prefect.states import Failed

    get_run_logger().error("%s", exc, exc_info=True)
    return Failed(name=INVALID_INPUT, message=str(exc))


def _input_error_names() -> set[str]:
    from nerflow.tasks.runtime.errors import InputError

    names, todo = set(), [InputError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _InputErrorsOnce(logging.Filter):
    """On the console, a bad input is said once: a step's failure line repeats the message the run
    ends with, so it is dropped; the run's last line names its state without repeating the message;
    where the caller prints the message itself (the `nerflow` command), the run's error line is
    dropped too. The run's log in the Prefect UI keeps every line and the traceback."""

    caller_prints = False

    def filter(self, record: logging.LogRecord) -> bool:
        from nerflow.tasks.runtime.errors import InputError

        if record.exc_info and isinstance(record.exc_info[1], InputError):
            return not self.caller_prints
        message = record.getMessage()
        if message.startswith("Finished in state Failed(") and any(
            f"exception {n}:" in message for n in _input_error_names()
        ):
            return False
        if message.startswith("Finished in state Invalid input("):
            record.msg, record.args = "Finished in state Invalid input", ()
        return True


_ONCE = _InputErrorsOnce()


def quiet_input_errors_on_console(caller_prints: bool | None = None) -> None:
    """Drop InputError tracebacks and repeats from Prefect's console handlers (idempotent).
    `caller_prints`: the caller prints the message itself (the `nerflow` command)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    if caller_prints is not None:
        _InputErrorsOnce.caller_prints = caller_prints
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _InputErrorsWithoutTraceback
            ):
                handler.setFormatter(_InputErrorsWithoutTraceback(handler.formatter or logging.Formatter()))
            if isinstance(handler, PrefectConsoleHandler) and _ONCE not in handler.filters:
                handler.addFilter(_ONCE)
