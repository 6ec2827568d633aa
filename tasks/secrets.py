"""Secrets come from a Prefect Secret block or the environment, never from settings or code."""

from __future__ import annotations

import logging
import os

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
