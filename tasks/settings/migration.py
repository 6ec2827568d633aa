"""Older setting names, migrated once, by version: a YAML file, `--set` overrides, deployment parameters
or a run's settings.json written under an older version load as the current settings.

Each step takes the data of one version to the next and is safe on data already in the newer shape (a
hand-written file without `settings_version` may mix both), so every step from the stated version (1
when absent) runs in order. A value given under both its old and its new name is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SETTINGS_VERSION = 2

# version 1 -> 2: the pretrained model is `base_model` (not "model", which is also the trained model and
# the torch module; not "checkpoint", which is also an epoch checkpoint); the train section split into the
# recipe (train), where and how fast it runs (compute) and bookkeeping (records).
MOVED_IN_2 = {
    ("model", "checkpoint"): ("base_model", "name"),
    ("model", "revision"): ("base_model", "revision"),
    ("model", "base_model_id"): ("base_model", "hub_id"),
    ("model", "head"): ("base_model", "head"),
    ("model", "label_mapping"): ("base_model", "label_mapping"),
    ("model", "trust_remote_code"): ("base_model", "trust_remote_code"),
    **{
        ("train", key): ("compute", key)
        for key in (
            "eval_batch_size",
            "precision",
            "compile",
            "gradient_checkpointing",
            "auto_batch_size",
            "nproc_per_node",
            "nnodes",
            "rdzv_endpoint",
            "rdzv_id",
        )
    },
    **{("train", key): ("records", key) for key in ("save_total_limit", "logging_steps", "reuse_cached_model")},
}


class MigrationConflict(ValueError):
    """One setting given under its old and its new name."""


def _move(data: dict[str, Any], old: tuple[str, str], new: tuple[str, str]) -> None:
    section = data.get(old[0])
    if not isinstance(section, dict) or old[1] not in section:
        return
    target = data.setdefault(new[0], {})
    if not isinstance(target, dict):
        return  # not a section: validation names it
    if new[1] in target:
        raise MigrationConflict(f"{'.'.join(old)} is the old name of {'.'.join(new)}; give only {'.'.join(new)}")
    target[new[1]] = section.pop(old[1])


def _to_2(data: dict[str, Any]) -> dict[str, Any]:
    train, tracking = data.get("train"), data.get("tracking")
    if isinstance(train, dict) and "group_by_length" in train:  # before `batching` existed
        grouped = train.pop("group_by_length")
        train.setdefault("batching", "length" if grouped else "random")
    if isinstance(tracking, dict) and "backend" in tracking:  # before several backends were possible
        backend = tracking.pop("backend")
        tracking.setdefault("backends", [] if backend == "none" else [backend])
    for old, new in MOVED_IN_2.items():
        _move(data, old, new)
    if data.get("model") == {}:
        data.pop("model")
    return data


STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _to_2}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """The data in the current version's names (a copy; the input is left as it was)."""
    version = data.get("settings_version", 1)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        return data  # validation reports the version it does not know
    migrated = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for step in range(max(version, 1), SETTINGS_VERSION):
        migrated = STEPS[step](migrated)
    migrated["settings_version"] = SETTINGS_VERSION
    return migrated
