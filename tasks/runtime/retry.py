"""Which failures are worth a retry, and the one place retries are configured.

A retry helps with a flaky network or a preempted machine; it cannot fix bad data, a wrong setting, a
model too large for the GPU or a shape mismatch, so those fail at once with their message instead of
burning the retry budget. Libraries wrap network errors (transformers raises an OSError whose cause
is httpx's ConnectError), so every test looks through the exception's causes.

One layer retries each call, never several stacked:
- network calls nerflow makes itself (Hub and S3 API calls in publish, the watcher) go through
  `call_with_backoff`; their clients are built without retries of their own (`NO_CLIENT_RETRIES`)
  and the publish task is not retried again by Prefect;
- calls made inside libraries nerflow does not wrap (loading a Hub dataset or tokenizer) are retried
  by the Prefect task (`TASK_RETRIES`, `network_retry_condition`);
- training is retried by Prefect once unless the error is deterministic (`unless_deterministic`);
  the retry resumes from the last complete checkpoint.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Prefect task retries for steps whose network calls happen inside libraries (seconds between tries).
TASK_RETRIES = {"retries": 3, "retry_delay_seconds": [5, 20, 60], "retry_jitter_factor": 0.5}
# Safety nets for steps whose risk is a connection that stalls without an error (seconds); compute
# steps (tokenize, train, evaluate) have none: their duration grows with the data.
NETWORK_STEP_TIMEOUT_S = 2 * 3600
REVISION_CHECK_TIMEOUT_S = 300
# botocore retries each call itself by default; call_with_backoff is the layer that retries.
NO_CLIENT_RETRIES = {"retries": {"total_max_attempts": 1, "mode": "standard"}}

_TRANSIENT_TYPES = {
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ReadError", "WriteError",
    "RemoteProtocolError", "NetworkError", "TimeoutException", "ProtocolError", "IncompleteRead",
    "ChunkedEncodingError", "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
    "ReadTimeoutError", "LocalEntryNotFoundError", "SSLError",
}  # fmt: skip
# A cache miss while the Hub is off (HF_HUB_OFFLINE) looks like a connection error but is not one.
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (explicitly or while handling), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


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


def _transient(exc: BaseException) -> bool:
    status = http_status(exc)
    if status is not None:
        return status in _RETRYABLE_HTTP
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, socket.gaierror)):
        return True
    name = type(exc).__name__
    return name in _TRANSIENT_TYPES or "Throttl" in name


def is_transient(exc: BaseException) -> bool:
    """A network or service hiccup anywhere in the causes: connection, timeout, HTTP 408/425/429/5xx;
    never a cache miss while the Hub is off, which the next try meets again."""
    from nerflow.tasks.runtime.hub_access import is_offline_cache_miss

    return not is_offline_cache_miss(exc) and any(_transient(e) for e in causes(exc))


def _deterministic(exc: BaseException) -> bool:
    from nerflow.tasks.runtime.errors import DatasetValidationError
    from nerflow.tasks.settings import SettingsError

    if isinstance(
        exc, (DatasetValidationError, SettingsError, ValueError, TypeError, KeyError, IndexError, FileNotFoundError)
    ):
        return True
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return True  # the same batch on the same device runs out again
    status = http_status(exc)
    return status is not None and 400 <= status < 500 and status not in _RETRYABLE_HTTP


def is_deterministic(exc: BaseException) -> bool:
    """An error a retry would only repeat: bad input or settings, out of memory, shape and index
    errors, HTTP 4xx. A transient cause anywhere makes it worth a retry after all."""
    return not is_transient(exc) and any(_deterministic(e) for e in causes(exc))


def _exception_of(state: Any) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except BaseException as e:  # some states re-raise when read
        return e
    return result if isinstance(result, BaseException) else None


def network_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn for steps whose failures worth retrying are network ones."""
    exc = _exception_of(state)
    return exc is None or is_transient(exc)


def unless_deterministic(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn for long compute: retry a preemption or a lost process, not an error
    that would happen again."""
    exc = _exception_of(state)
    return exc is None or not is_deterministic(exc)


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
            log.warning(
                "%s failed with %s; retry %d of %d in %.1f s", what, describe_error(exc), attempt, attempts - 1, delay
            )
            sleep(delay)
    raise AssertionError("unreachable")
