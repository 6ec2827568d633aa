"""What a run may touch: checked before any work, for deployments that run other people's parameters.

A deployment's parameters come from whoever can start a run (the UI form, the API, an event), so on a
worker the folders and modules a run may reach are an allow-list, set in the worker's environment (or
the pool's job variables); without it, nothing is restricted (a local `nerflow train` runs its owner's
own settings):

- `NERFLOW_ALLOWED_ROOTS`: folders (separated by `:`) under which `output_dir`, `cache_dir`, a local
  `dataset.source` and a local `model.checkpoint` must lie;
- `NERFLOW_ALLOWED_PACKAGES`: the modules a `package:` checkpoint may name (separated by `,`).

Always checked: the W&B key's and MLflow credentials' Secret blocks are not the Hub token's (a key
must reach one service only), and s3:// URIs have no `.` or `..` segments (they would reach outside the cache folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from tasks.errors import InputError
from tasks.settings import RunSettings
from tasks.sources import is_local_source


class RunRefused(InputError):
    """A parameter is outside what this worker allows; the message names each and why."""


def allowed_roots(env: Mapping[str, str]) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in env.get("NERFLOW_ALLOWED_ROOTS", "").split(os.pathsep) if p.strip()]


def local_paths(settings: RunSettings) -> Iterator[tuple[str, str]]:
    """(setting, value) of every setting that names a place on this machine."""
    yield "output_dir", settings.output_dir
    if settings.cache_dir:
        yield "cache_dir", settings.cache_dir
    if is_local_source(settings.dataset):
        yield "dataset.source", settings.dataset.source
    checkpoint = settings.model.checkpoint
    if not checkpoint.startswith("package:") and (checkpoint.startswith((".", "/", "~")) or Path(checkpoint).expanduser().exists()):
        yield "model.checkpoint", checkpoint


def policy_problems(settings: RunSettings, env: Mapping[str, str]) -> list[str]:
    problems = []
    if roots := allowed_roots(env):
        for name, value in local_paths(settings):
            place = Path(value).expanduser().resolve()
            if not any(place == root or root in place.parents for root in roots):
                problems.append(f"{name}={value!r} is outside the allowed folders ({', '.join(map(str, roots))}; NERFLOW_ALLOWED_ROOTS)")
    packages = {p.strip() for p in env.get("NERFLOW_ALLOWED_PACKAGES", "").split(",") if p.strip()}
    checkpoint = settings.model.checkpoint
    if checkpoint.startswith("package:") and "NERFLOW_ALLOWED_PACKAGES" in env and checkpoint[8:] not in packages:
        problems.append(f"model.checkpoint={checkpoint!r}: package not in NERFLOW_ALLOWED_PACKAGES ({', '.join(sorted(packages)) or 'none'})")
    tracking = settings.tracking
    for backend, field, block in (("wandb", "wandb_api_key_block", tracking.wandb_api_key_block), ("mlflow", "mlflow_credentials_block", tracking.mlflow_credentials_block)):
        if backend in tracking.backends and block == settings.publish.hf_token_block:
            problems.append(
                f"tracking.{field} names the Hub token's block ({block!r}): the Hub token would be sent to "
                f"{'W&B' if backend == 'wandb' else 'the MLflow server'}; name its own Secret block"
            )
    for name, uri in (("dataset.source", settings.dataset.source), ("publish.s3_uri", settings.publish.s3_uri or "")):
        if uri.startswith("s3://") and any(part in (".", "..") for part in uri[5:].split("/")):
            problems.append(f"{name}={uri!r}: '.' and '..' segments are not allowed in an s3:// URI")
    return problems


def check_run_policy(settings: RunSettings, env: Mapping[str, str] | None = None) -> None:
    """Raise RunRefused naming every setting this worker does not allow."""
    problems = policy_problems(settings, os.environ if env is None else env)
    if problems:
        raise RunRefused("run refused before any work:\n" + "\n".join(f"  - {p}" for p in problems))
