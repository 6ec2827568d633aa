"""Which failures are worth a retry.

A retry helps with a flaky network or a preempted machine; it cannot fix bad data or a wrong setting,
so those fail at once with their message instead of burning the retry budget.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_PERMANENT_HTTP = {400, 401, 403, 404, 409, 422}


def http_status(exc: BaseException) -> int | None:
    for attr in ("response", "last_response"):
        resp = getattr(exc, attr, None)
        code = getattr(resp, "status_code", None) or getattr(resp, "status", None)
        if isinstance(code, int):
            return code
    err = getattr(exc, "response", None)
    if isinstance(err, dict):  # botocore ClientError
        code = err.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts, HTTP 429 and 5xx: yes. Bad input, 4xx and programming errors: no."""
    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    name = type(exc).__name__
    return any(word in name for word in ("Connection", "Timeout", "Throttl", "EndpointConnection"))


def _exception_of(state: Any) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except BaseException as e:  # some states re-raise when read
        return e
    return result if isinstance(result, BaseException) else None


def network_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn for tasks that touch the network."""
    exc = _exception_of(state)
    return exc is None or is_transient(exc)


def unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn for long compute: retry anything but bad input or settings."""
    exc = _exception_of(state)
    return not isinstance(exc, (ValueError, TypeError, KeyError, FileNotFoundError))


def describe_error(exc: BaseException) -> str:
    """Type and HTTP status only: exception texts can echo request details we must not log."""
    status = http_status(exc)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def call_with_backoff(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 5,
    base_s: float = 1.0,
    max_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn; on a transient error wait base_s * 2^k (capped, with +-50% jitter) and try again."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.warning("%s failed with %s; retry %d of %d in %.1f s", what, describe_error(exc), attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")
