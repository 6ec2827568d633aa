"""ingest: load the labelled sentences, validate every split, fingerprint and profile them.

The plain function `ingest_dataset` does the work and is what tests call; `ingest_task` is the Prefect
task. Whatever the source (Hub, local files, S3: tasks.sources), the result is the same normalised
dataset saved on disk (columns `tokens` and `ner_tags`, splits `train`/`validation`/`test`) and a small
`DatasetRef` that points to it. Bad rows stop the run here, before any training, with the file, split,
row and field (tasks.validation).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.refs import SPLIT_ROLES, DatasetRef
from tasks.retry import NETWORK_STEP_TIMEOUT_S, TASK_RETRIES, network_retry_condition
from tasks.settings import DatasetSettings
from tasks.sources import read_source
from tasks.storage import atomic_dir, is_sealed
from tasks.validation import dataset_fingerprint, profile_splits, resolve_label_names, validate_splits

log = logging.getLogger(__name__)


def apply_sample_limits(raw: dict, cfg: DatasetSettings) -> None:
    """Keep only the first max_train_samples / max_eval_samples rows (line numbers follow)."""
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    for role, limit in limits.items():
        if limit is not None:
            raw[role].rows = raw[role].rows[:limit]
            if raw[role].line_numbers:
                raw[role].line_numbers = raw[role].line_numbers[:limit]


def save_clean(clean: dict, label_names: list[str], path: Path) -> None:
    """The validated splits as a datasets.DatasetDict (tags as a ClassLabel), written once per fingerprint."""
    import datasets

    if is_sealed(path):
        return
    features = datasets.Features(
        {"tokens": datasets.List(datasets.Value("string")), "ner_tags": datasets.List(datasets.ClassLabel(names=label_names))}
    )
    splits = {role: datasets.Dataset.from_dict({"tokens": s.tokens, "ner_tags": s.tags}, features=features) for role, s in clean.items()}
    with atomic_dir(path) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))


def ingest_dataset(cfg: DatasetSettings, cache_dir: Path) -> DatasetRef:
    """Load, validate, normalise, fingerprint and profile the dataset; save it under cache_dir."""
    raw, folder, source_revision = read_source(cfg, Path(cache_dir))
    apply_sample_limits(raw, cfg)
    label_names = resolve_label_names(cfg, raw, folder)
    clean = validate_splits(raw, cfg, label_names)
    for role in SPLIT_ROLES:
        if clean[role].iob_violations:
            log.warning(
                "split %r: %d I- tag(s) do not continue a span of their type (kept; counted as span starts), e.g. %s",
                role,
                clean[role].iob_violations,
                "; ".join(clean[role].iob_examples),
            )
    fingerprint = dataset_fingerprint(label_names, clean)
    path = Path(cache_dir) / "datasets" / fingerprint[:20]
    save_clean(clean, list(label_names), path)
    return DatasetRef(
        path=str(path),
        fingerprint=fingerprint,
        source=cfg.source,
        config=cfg.config if folder is None else None,
        revision=source_revision or f"sha256:{fingerprint[:16]}",
        label_names=list(label_names),
        num_rows={role: len(s.tokens) for role, s in clean.items()},
        iob_violations={role: s.iob_violations for role, s in clean.items()},
        language=cfg.resolved_language(),
        profile=profile_splits(label_names, clean).to_dict(orient="records"),
        split_names={"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split},
    )


@task(
    name="ingest",
    cache_policy=NO_CACHE,  # the source may have changed; re-reading it is the point
    retry_condition_fn=network_retry_condition,
    timeout_seconds=NETWORK_STEP_TIMEOUT_S,
    **TASK_RETRIES,
)
def ingest_task(cfg: DatasetSettings, cache_dir: str) -> DatasetRef:
    """Load and validate the dataset (retried on network errors only) and publish its profile."""
    ref = ingest_dataset(cfg, Path(cache_dir))
    get_run_logger().info(
        "dataset %s revision %s fingerprint %s: %s sentences, labels %s",
        ref.source,
        ref.revision,
        ref.fingerprint[:12],
        ref.num_rows,
        ref.label_names,
    )
    create_table_artifact(
        key="dataset-profile",
        table=ref.profile,
        description=f"Dataset profile of {ref.source} (revision {ref.revision}, fingerprint {ref.fingerprint[:12]})",
    )
    return ref
