"""Prefect cache keys from fingerprints, and reuse of cached outputs that must still exist on disk.

Cached task results are small references to folders and files. A cache hit is only worth having
while what it points to is still there, so `cached_or_rebuilt` checks and, if the folder is gone,
runs the task again with `refresh_cache=True`. Outputs a cache hit found in an earlier run's folder
are copied into the current run by `adopt_outputs`, so every run folder is complete on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.storage import atomic_dir

T = TypeVar("T")


def fingerprint(*parts: Any) -> str:
    def plain(part: Any) -> Any:
        return part.model_dump(mode="json") if isinstance(part, BaseModel) else part

    payload = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def file_identity(path: Path) -> str:
    """Size and modification time: changes whenever the file is rewritten (folders are swapped whole)."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


MODEL_FILES = ("model.safetensors", "config.json")


def model_identity(model_dir: str | Path) -> list[str]:
    """File identities of a saved model's weights and config ("missing" where absent)."""
    folder = Path(model_dir)
    return [file_identity(folder / name) if (folder / name).is_file() else "missing" for name in MODEL_FILES]


def cached_or_rebuilt(task, still_valid: Callable[[T], bool], *args: Any, **kwargs: Any) -> T:
    result = task(*args, **kwargs)
    if not still_valid(result):
        get_run_logger().warning("cached result of %s points to files that are gone; running it again", task.name)
        result = task.with_options(refresh_cache=True)(*args, **kwargs)
    return result


def link_or_copy(src: str, dst: str) -> str:
    """Hard-link where possible: nerflow never edits a model file in place (writes replace whole
    files or folders), so a link shares bytes safely; another filesystem gets a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def adopt_outputs(run_dir: Path, model, evaluation):
    """Copy a cached model folder (and metrics) from an earlier run into this run; return new refs."""
    run_dir = Path(run_dir)
    source_run = Path(model.run_dir)
    if source_run.resolve() != run_dir.resolve():
        with atomic_dir(run_dir / "model", replace=True) as tmp:
            shutil.copytree(model.path, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
        if (source_run / "train_log.json").is_file():
            shutil.copy2(source_run / "train_log.json", run_dir / "train_log.json")
        model = model.model_copy(
            update={
                "path": str(run_dir / "model"),
                "run_dir": str(run_dir),
                "checkpoint_dir": str(run_dir / "checkpoints"),
                "reused_from": model.reused_from or str(source_run),
            }
        )
    if Path(evaluation.path).resolve().parent != run_dir.resolve():
        shutil.copy2(evaluation.path, run_dir / "metrics.json")
        evaluation = evaluation.model_copy(update={"path": str(run_dir / "metrics.json")})
    return model, evaluation
