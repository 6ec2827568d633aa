"""What the steps hand each other: small references to data and models on disk, never the data.

Each step returns one of these and the next step takes it; Prefect caches and persists them (they are
small and JSON-serialisable). They sit below the steps, beside the settings, so that no step imports
another to know what it receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nerflow.tasks.settings import (
    AlignmentStrategy,
    BaseModelSettings,
    ComputeSettings,
    RecordSettings,
    RunSettings,
    TrackingSettings,
    TrainSettings,
)

CHECKPOINT_DIR = "checkpoints"
SPLIT_ROLES = ("train", "validation", "test")


class DatasetRef(BaseModel):
    """A validated, normalised dataset on disk: what later steps receive instead of the data."""

    path: str
    fingerprint: str
    source: str
    name: str = ""
    """What the model card calls the dataset (dataset.name, the Hub id, or the folder's name)."""
    config: str | None
    revision: str
    source_revision: str | None = None
    """The source's own revision (Hub commit, S3 ETags hash); None for local files, known by content only."""
    label_names: list[str]
    """IOB2 tag names in id order: what the model is trained on."""
    tag_scheme: str = "iob2"
    """The scheme the source's tags were written in (nerflow.tasks.data.schemes); converted to IOB2."""
    source_label_names: list[str] | None = None
    """The source's own tag names, when its scheme is not IOB2."""
    num_rows: dict[str, int]
    iob_violations: dict[str, int]
    language: str | None
    profile: list[dict[str, Any]]
    split_names: dict[str, str]
    """Dataset split name for each role (train/validation/test)."""

    def load(self):
        """The saved datasets.DatasetDict: splits train/validation/test, columns tokens and ner_tags."""
        import datasets

        return datasets.load_from_disk(self.path)


class TokenizedRef(BaseModel):
    """A tokenized, label-aligned dataset on disk (cached by key), with what tokenization lost."""

    path: str
    cache_key: str
    dataset_fingerprint: str
    base_model: str
    """The pretrained model whose tokenizer made it (base_model.name)."""
    tokenizer_fingerprint: str
    alignment: AlignmentStrategy
    max_length: int
    label_names: list[str]
    tag_scheme: str = "iob2"
    """The dataset's source scheme: the trained model writes predictions back in it."""
    stats: dict[str, dict[str, int]]
    roundtrip: dict[str, Any]
    warnings: list[str]

    def load(self):
        """The saved datasets.DatasetDict: input_ids, attention_mask, labels, word_ids, word_labels."""
        import datasets

        return datasets.load_from_disk(str(Path(self.path) / "data"))


class ModelRef(BaseModel):
    """A trained model folder (the best epoch) and how it was trained."""

    path: str
    run_dir: str
    checkpoint_dir: str
    resumed_from: str | None
    best_checkpoint: str | None
    best_validation_f1: float | None
    device: str
    precision: str
    batching: str = "random"
    compiled: bool = False
    compile_s: float = 0.0
    """Seconds spent compiling (torch.compile), part of train_runtime_s."""
    decoding: str = "argmax"
    train_runtime_s: float
    train_samples_per_second: float | None
    epochs: list[dict[str, Any]]
    """One row per evaluated epoch: epoch, train loss, validation precision/recall/F1."""
    reused_from: str | None = None
    """Run folder this model was trained in, when a cache hit reused an earlier run's model."""
    stopped_early: str | None = None
    """When and why early stopping ended training (None: every epoch ran)."""


class RunContext(BaseModel):
    """The run every step works for: its name, its folder, and the shared cache beside the runs."""

    run_name: str
    run_dir: str
    cache_dir: str

    @classmethod
    def for_run(cls, settings: RunSettings, run_name: str, run_dir: str | Path | None = None) -> RunContext:
        folder = Path(run_dir) if run_dir is not None else Path(settings.output_dir) / run_name
        return cls(run_name=run_name, run_dir=str(folder), cache_dir=str(settings.resolved_cache_dir()))


class TrainJob(BaseModel):
    """Everything one training needs: the train task, train_model and the torchrun entry point all take it."""

    tokenized: TokenizedRef
    base_model: BaseModelSettings
    recipe: TrainSettings
    compute: ComputeSettings
    records: RecordSettings
    tracking: TrackingSettings
    """Where the Trainer logs live (tracking.backends); not part of the cache key."""
    decoding: str
    """How validation scores read word tags (evaluation.decoding): it picks the best epoch."""
    weights: str = ""
    """Fingerprint of the pretrained weights (nerflow.tasks.training.pretrained.weights_fingerprint): part of
    the cache key, so a base model updated in place trains again."""
    mlflow_run_id: str | None = None
    """The MLflow run the Trainer's live logger joins (tracking.backends has mlflow); not part of the cache key."""
    run_dir: str
    run_name: str
    progress_artifact_id: str | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / CHECKPOINT_DIR

    @classmethod
    def for_run(cls, settings: RunSettings, tokenized: TokenizedRef, ctx: RunContext, weights: str = "") -> TrainJob:
        return cls(
            tokenized=tokenized,
            base_model=settings.base_model,
            recipe=settings.train,
            compute=settings.compute,
            records=settings.records,
            tracking=settings.tracking,
            decoding=settings.evaluation.decoding,
            weights=weights,
            run_dir=ctx.run_dir,
            run_name=ctx.run_name,
        )


class EvaluationRef(BaseModel):
    """Word-level scores of a trained model (metrics.json), decoded as evaluation.decoding says."""

    path: str
    decoding: str = "argmax"
    word_level: dict[str, dict[str, Any]]
    word_level_argmax: dict[str, dict[str, float]] = {}
    """Overall scores with per-word argmax tags: what transformers' pipeline gets from the same model."""
    subword_level_tutorial_f1: dict[str, float]
    test_confusion: dict[str, Any]
    """Word counts by gold and predicted entity type on the test split (B-/I- merged)."""
    test_schemas: dict[str, Any] = {}
    """Test scores under seqeval's strict mode and nervaluate's schemas (nerflow.tasks.analysis.errors)."""
    test_error_classes: dict[str, dict[str, int]] = {}
    """Test entities by kind of error (correct, type, boundary, boundary+type, missed, spurious), per type."""

    @property
    def test(self) -> dict[str, Any]:
        return self.word_level["test"]


class AnalysisRef(BaseModel):
    """The run's error analysis (errors.jsonl) and, when asked, its label issues (label_issues.jsonl)."""

    errors_path: str
    worst: list[dict[str, Any]] = []
    """The first test sentences of errors.jsonl (highest loss first)."""
    label_issues_path: str | None = None
    label_issues: int = 0
    """Training sentences flagged as likely mislabelled."""
    train_sentences: int = 0
    top_issues: list[dict[str, Any]] = []


class ExportRef(BaseModel):
    """The model's ONNX export (model/onnx/) and its parity report (parity.json)."""

    path: str
    parity: dict[str, Any]


class TrackingRef(BaseModel):
    """Where the run is tracked beyond its folder: the MLflow run (None without MLflow) and, once
    published, the registered model version."""

    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    registered_version: str | None = None


class CardRef(BaseModel):
    """The model card (README.md in the model folder) and its widget examples and pictures."""

    path: str
    widget_examples: list[str]
    images: list[str] = []
