"""Secrets come from a Prefect Secret block or the environment, never from settings or code."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def resolve_secret(block_name: str | None, env_var: str) -> str | None:
    """The value of Secret block `block_name` if it exists, else the environment variable, else None.

    The value is returned to the caller only: it is never logged, and callers must not store it.
    """
    if block_name:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(block_name, _sync=True).get()
            if value:
                return str(value)
        except ValueError:
            pass  # no block of that name: fall back to the environment
        except Exception as e:  # no reachable Prefect API: the environment is the only source
            log.debug("could not read Secret block %r: %s", block_name, type(e).__name__)
    return os.environ.get(env_var) or None


@contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block only (the W&B key is not left behind
    for every later subprocess of the worker), then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
