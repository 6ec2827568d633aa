"""Prefect cache keys from fingerprints, result records that are data, and reuse of cached outputs
that must still exist on disk.

Cached task results are small references to folders and files, persisted as JSON result records in
`JsonResultStorage`, which refuses to hand Prefect any record it would turn into code. A cache hit is
only worth having while what it points to is still there: each cached step is declared once as a
`CachedStep` (its task, how to tell a hit is still valid, how to adopt an earlier run's output).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_run_logger
from pydantic import BaseModel

from nerflow.tasks.runtime.errors import InputError


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


class UnsafeResultRecord(InputError):
    """A persisted result record that would not be read as plain JSON data."""


# The only serializer nerflow's records may name: Prefect's JSON serializer exactly as nerflow writes it.
# A record's serializer is read from the record itself, so a forged one could name pickle, or JSON with
# `jsonlib: pickle` or an `object_decoder` such as os.system; each would run code on load.
JSON_SERIALIZER = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}
# Prefect's JSON decoder imports the class a `__class__` (or `__exc_type__`) entry names: only nerflow's
# own references, and builtin exceptions, may be named.
TRUSTED_CLASS_PREFIXES = ("nerflow.", "builtins.")


def _named_classes(value: Any) -> list[str]:
    if isinstance(value, dict):
        names = [value[k] for k in ("__class__", "__exc_type__") if isinstance(value.get(k), str)]
        return names + [n for item in value.values() for n in _named_classes(item)]
    if isinstance(value, list):
        return [n for item in value for n in _named_classes(item)]
    return []


def record_problem(content: bytes) -> str | None:
    """Why a result record may not be deserialized, or None if it is plain JSON data nerflow wrote."""
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "it is not a JSON result record"
    if serializer != JSON_SERIALIZER:
        return f"it names the serializer {json.dumps(serializer)[:200]}, not Prefect's plain JSON serializer"
    try:
        result = json.loads(record["result"]) if isinstance(record["result"], str) else record["result"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "its result is not JSON"
    untrusted = sorted({n for n in _named_classes(result) if not n.startswith(TRUSTED_CLASS_PREFIXES)})
    if untrusted:
        return f"it names classes outside nerflow: {untrusted[:5]}"
    return None


class JsonResultStorage(LocalFileSystem):
    """Result storage whose records are data: a record that names another serializer, or classes outside
    nerflow, is refused before Prefect deserializes it, moved aside as KEY.refused, and reported; the
    step then runs again. The folder is the reading process's Prefect result folder
    (PREFECT_LOCAL_STORAGE_PATH) unless the operator sets the block's basepath (a shared volume), so one
    block document serves every machine of a pool."""

    _block_type_name = "nerflow JSON results"
    _block_type_slug = "nerflow-json-results"

    def _resolve_path(self, path: str) -> Path:
        if self.basepath:
            return super()._resolve_path(path)
        from prefect.settings import get_current_settings

        return LocalFileSystem(basepath=str(get_current_settings().results.local_storage_path))._resolve_path(path)

    def _checked(self, path: str, content: bytes) -> bytes:
        problem = record_problem(content)
        if problem is None:
            return content
        where = self._resolve_path(path)
        with contextlib.suppress(OSError):
            os.replace(where, where.with_name(where.name + ".refused"))  # kept for whoever investigates
        message = (
            f"result record {where} refused, not deserialized: {problem}. nerflow only reads the JSON records it "
            f"writes; it was moved to {where.name}.refused and the step runs again. If nerflow did not write it, "
            "someone with write access to the result folder did."
        )
        with contextlib.suppress(Exception):
            get_run_logger().error(message)
        raise UnsafeResultRecord(message)

    async def aread_path(self, path: str) -> bytes:
        return self._checked(path, await super().aread_path(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._checked(path, super().read_path(path, _sync=True))


RESULT_STORAGE = f"{JsonResultStorage._block_type_slug}/default"
# How nerflow's cached steps persist their results (the references they return): JSON, in JsonResultStorage.
JSON_RESULTS = {"persist_result": True, "result_serializer": "json", "result_storage": RESULT_STORAGE}


def ensure_result_storage() -> None:
    """Save the result storage block the cached steps name, if this Prefect server does not have it yet
    (a fresh server, the temporary one of a local run); an operator's own settings in it are kept. Runs
    that start together on a fresh server may all find none: the first to save it wins, and the others
    use its document (Block.save answers a taken name with ValueError, not ObjectAlreadyExists)."""
    name = RESULT_STORAGE.split("/", 1)[1]
    try:
        JsonResultStorage.load(name, _sync=True)
    except ValueError:  # no such block document yet
        try:
            JsonResultStorage().save(name, _sync=True)
        except ValueError:  # saved by another run since: load raises if it was anything else
            JsonResultStorage.load(name, _sync=True)


class CachedStep:
    """A cached step, declared once beside its task: call it as the task.

    A cache hit is used only while `still_valid` says what it points to is still there (else the task
    runs again with refresh_cache); `refresh(*args)` true skips the cache; `adopt(result, *args)` brings
    a hit found in an earlier run's folder into this run's, so every run folder is complete on its own.
    """

    def __init__(self, task, still_valid: Callable[[Any], bool], adopt=None, refresh=None):
        self.task, self.still_valid, self.adopt, self.refresh = task, still_valid, adopt, refresh
        self.name = task.name

    def __call__(self, *args: Any) -> Any:
        fresh = self.task.with_options(refresh_cache=True)
        result = (fresh if self.refresh and self.refresh(*args) else self.task)(*args)
        if not self.still_valid(result):
            get_run_logger().warning("cached result of %s points to files that are gone; running it again", self.name)
            result = fresh(*args)
        return self.adopt(result, *args) if self.adopt and result is not None else result


def link_or_copy(src: str, dst: str) -> str:
    """Hard-link where possible: nerflow never edits a model file in place (writes replace whole
    files or folders), so a link shares bytes safely; another filesystem gets a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
