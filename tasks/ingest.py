"""ingest: load the labelled sentences, validate every split, fingerprint and profile them.

The plain function `ingest_dataset` does the work and is what tests call; `ingest_task` is the Prefect
task. Whatever the source (Hub, local files, S3: nerflow.tasks.data.sources), the result is the same normalised
dataset saved on disk (columns `tokens` and `ner_tags`, splits `train`/`validation`/`test`) and a small
`DatasetRef` that points to it. Bad rows stop the run here, before any training, with the file, split,
row and field (nerflow.tasks.data.checks).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from nerflow.tasks.data.checks import (
    dataset_fingerprint,
    profile_splits,
    resolve_label_names,
    to_training_tags,
    validate_splits,
)
from nerflow.tasks.data.sources import read_source
from nerflow.tasks.refs import SPLIT_ROLES, DatasetRef, RunContext
from nerflow.tasks.runtime.files import atomic_dir, is_sealed
from nerflow.tasks.runtime.retry import NETWORK_STEP_TIMEOUT_S, TASK_RETRIES, network_retry_condition
from nerflow.tasks.settings import DatasetSettings

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
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=label_names)),
        }
    )
    splits = {
        role: datasets.Dataset.from_dict({"tokens": s.tokens, "ner_tags": s.tags}, features=features)
        for role, s in clean.items()
    }
    with atomic_dir(path) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))


def ingest_dataset(cfg: DatasetSettings, cache_dir: Path) -> DatasetRef:
    """Load, validate, convert to IOB2, normalise, fingerprint and profile the dataset; save it under cache_dir."""
    raw, folder, source_revision = read_source(cfg, Path(cache_dir))
    apply_sample_limits(raw, cfg)
    labels = resolve_label_names(cfg, raw, folder)
    clean, label_names, scheme = to_training_tags(validate_splits(raw, cfg, labels), cfg, labels)
    _logger().info(
        "tagging scheme: %s (%s)%s",
        scheme.scheme.upper(),
        scheme.evidence,
        "" if scheme.scheme == "iob2" else "; converted to IOB2 for training",
    )
    for role in SPLIT_ROLES:
        if clean[role].iob_violations:
            _logger().warning(
                "split %r: %d I- tag(s) do not continue a span of their type (kept; counted as span starts), e.g. %s",
                role,
                clean[role].iob_violations,
                "; ".join(clean[role].iob_examples),
            )
    fingerprint = dataset_fingerprint(label_names, clean, scheme.scheme)
    path = Path(cache_dir) / "datasets" / fingerprint[:20]
    save_clean(clean, list(label_names), path)
    return DatasetRef(
        path=str(path),
        fingerprint=fingerprint,
        source=cfg.source,
        name=dataset_name(cfg, folder is not None),
        config=cfg.config if folder is None else None,
        revision=source_revision or f"sha256:{fingerprint[:16]}",
        source_revision=source_revision,
        label_names=list(label_names),
        tag_scheme=scheme.scheme,
        source_label_names=labels.names if scheme.scheme != "iob2" else None,
        num_rows={role: len(s.tokens) for role, s in clean.items()},
        iob_violations={role: s.iob_violations for role, s in clean.items()},
        language=cfg.resolved_language(),
        profile=profile_splits(label_names, clean, scheme.scheme).to_dict(orient="records"),
        split_names={"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split},
    )


def dataset_name(cfg: DatasetSettings, local: bool) -> str:
    """What the card calls the dataset: dataset.name, else the Hub id, else the folder's (or S3 prefix's)
    name, never a path on the machine that trained it."""
    if cfg.name:
        return cfg.name
    if cfg.source.startswith("s3://") or local:
        return cfg.source.rstrip("/").rsplit("/", 1)[-1]
    return cfg.source


def _logger():
    from nerflow.tasks.runtime.logs import run_logger

    return run_logger(log)


def ingest(cfg: DatasetSettings, ctx: RunContext) -> DatasetRef:
    """The dataset, validated and normalised, saved under the run's cache folder."""
    return ingest_dataset(cfg, Path(ctx.cache_dir))


@task(
    name="ingest",
    cache_policy=NO_CACHE,  # the source may have changed; re-reading it is the point
    retry_condition_fn=network_retry_condition,
    timeout_seconds=NETWORK_STEP_TIMEOUT_S,
    **TASK_RETRIES,
)
def ingest_task(cfg: DatasetSettings, ctx: RunContext) -> DatasetRef:
    """Load and validate the dataset (retried on network errors only) and publish its profile."""
    ref = ingest(cfg, ctx)
    revision = f"revision {ref.source_revision}, " if ref.source_revision else ""
    get_run_logger().info(
        "dataset %s (%s): %s%s sentences, labels %s; content fingerprint %s",
        ref.name,
        ref.source,
        revision,
        ref.num_rows,
        ref.label_names,
        ref.fingerprint[:12],
    )
    create_table_artifact(
        key="dataset-profile",
        table=ref.profile,
        description=(
            f"Dataset profile of {ref.name} ({ref.tag_scheme.upper()} tags; {revision}content "
            f"fingerprint {ref.fingerprint[:12]})"
        ),
    )
    return ref
