"""The sections of a nerflow run's settings, each deciding one thing.

`RunSettings` is the single source of truth: the CLI (`--config run.yaml` plus `--set key=value`), the
Prefect flow's parameters (and so the run form in the Prefect UI) and YAML files are all built from it.
Every field carries a description (shown in the UI) and bounds, so a bad value fails here, naming the
field, before any dataset or model is loaded.

Secrets are never fields: settings name the Prefect Secret block to read, never its value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nerflow.tasks.settings.migration import SETTINGS_VERSION, migrate

AlignmentStrategy = Literal["first", "all", "tutorial"]
Tracker = Literal["wandb", "mlflow", "tensorboard"]
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
Optimizer = Literal["adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "rmsprop"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DatasetFormat = Literal["auto", "hub", "jsonl", "json", "parquet", "conll", "csv", "tsv"]
PublishTarget = Literal["local", "hub", "s3"]
Batching = Literal["auto", "random", "length", "static"]
CompileMode = Literal["auto", "off", "on"]
Decoding = Literal["iob2", "argmax"]
HeadChoice = Literal["auto", "reuse", "fresh"]
TagScheme = Literal["auto", "iob1", "iob2", "bioes", "iobes", "bilou", "io"]

TAG_NAME = re.compile(r"^\S+$")  # O, B-PER, E-LOC, U-ORG or a bare type: nerflow.tasks.data.schemes tells the scheme
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSettings(_Section):
    """Where the labelled sentences come from and how their columns are named."""

    source: str = Field(
        "unimelb-nlp/wikiann",
        min_length=1,
        description="Hugging Face Hub dataset id, a local folder holding train/validation/test files "
        "(jsonl, json, parquet, CoNLL, CSV or TSV), or an s3://bucket/prefix URI holding such files.",
    )
    config: str | None = Field(
        "bn", description="Hub dataset configuration (for WikiANN: the language code). Ignored for files."
    )
    revision: str | None = Field(
        None, description="Hub dataset revision (branch, tag or commit sha) to pin. None: the default branch."
    )
    format: DatasetFormat = Field(
        "auto", description="File format of a local or S3 source; 'auto' picks it from the file extensions."
    )
    tokens_column: str = Field("tokens", min_length=1, description="Column holding the list of words.")
    tags_column: str = Field(
        "ner_tags",
        min_length=1,
        description="Column holding one tag per word (names or ids, in the scheme tag_scheme says).",
    )
    label_names: list[str] | None = Field(
        None,
        description="Tag names in id order (e.g. O, B-PER, I-PER). None: from the dataset's ClassLabel feature, "
        "a labels.txt beside the files, or the string tags themselves. A labels.txt must agree.",
    )
    tag_scheme: TagScheme = Field(
        "auto",
        description="How the tags mark entities: 'iob2' (B- starts every entity), 'iob1' (CoNLL-2003 as released: "
        "B- only between adjacent entities), 'bioes'/'iobes', 'bilou', 'io' (bare types). 'auto': found from the "
        "tags. Every scheme is converted span for span to IOB2 for training, decoding and scoring.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The dataset's name in the model card. None: the Hub id, else the folder's (or S3 prefix's) name.",
    )
    train_split: str = Field("train", min_length=1, description="Name of the training split.")
    validation_split: str = Field(
        "validation", min_length=1, description="Split used to pick the best epoch (early model selection)."
    )
    test_split: str = Field("test", min_length=1, description="Held-out split reported in the model card.")
    max_train_samples: int | None = Field(
        None, ge=1, description="Keep only the first N training sentences (quick runs). None: all."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Keep only the first N validation and test sentences. None: all."
    )
    language: str | None = Field(
        None,
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$",
        description="ISO 639 language code for the model card. None: the hub config when it is one.",
    )

    @field_validator("label_names")
    @classmethod
    def _iob_labels(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        bad = [n for n in names if not TAG_NAME.match(n)]
        if bad:
            raise ValueError(f"label names must be tags without spaces (O, B-TYPE, I-TYPE, ...); not: {bad}")
        if "O" not in names:
            raise ValueError("label names must include 'O'")
        return names

    @model_validator(mode="after")
    def _distinct_splits(self) -> DatasetSettings:
        splits = [self.train_split, self.validation_split, self.test_split]
        if len(set(splits)) != 3:
            raise ValueError(f"train, validation and test splits must differ, got {splits}")
        return self

    def resolved_scheme(self) -> str | None:
        """The declared tagging scheme (iobes is bioes); None: detect it."""
        return None if self.tag_scheme == "auto" else "bioes" if self.tag_scheme == "iobes" else self.tag_scheme

    def resolved_language(self) -> str | None:
        if self.language:
            return self.language
        if self.config and re.fullmatch(r"[a-z]{2,3}", self.config):
            return self.config
        return None


class BaseModelSettings(_Section):
    """The pretrained model to fine-tune."""

    name: str = Field(
        "bert-base-multilingual-cased",
        min_length=1,
        description="Hub model id or local folder of a pretrained BERT-family model with a fast tokenizer. "
        "'package:MODULE' loads the folder given by MODULE.get_model_path() (the offline demo model).",
    )
    revision: str | None = Field(None, description="Hub model revision to pin. None: the default branch.")
    hub_id: str | None = Field(
        None,
        description="Hub id written as base_model in the model card when `name` is a local folder.",
    )
    head: HeadChoice = Field(
        "auto",
        description="The classification head of a base model that already is an NER model. 'auto': keep the "
        "rows of the labels it shares with the dataset (by name, or through label_mapping), new rows for "
        "the others. 'reuse': the same, but every dataset label must match. 'fresh': a new head.",
    )
    label_mapping: dict[str, str] | None = Field(
        None,
        description="Dataset label -> the base model's label it continues, e.g. {B-PER: B-person}, for heads "
        "whose names differ from the dataset's. Unmapped labels match by name.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the base model (its auto_map) to build the model and "
        "tokenizer. Off: only transformers' own classes load, from safetensors weights.",
    )


class TokenizeSettings(_Section):
    """How words become subwords and how word labels reach them."""

    alignment: AlignmentStrategy = Field(
        "first",
        description="'first': the first subword of each word carries its label, the rest are ignored "
        "(-100). 'all': every subword is labelled, B- becomes I- on continuation pieces. 'tutorial': "
        "every subword gets the word's tag verbatim (B- copied), kept only to compare against.",
    )
    max_length: int = Field(
        128,
        ge=8,
        le=8192,
        description="Longest input in subwords; longer sentences are truncated (counted and warned about, "
        "their lost words scored as O). WikiANN sentences average about 20 subwords and 128 keeps more than "
        "99.9% of them whole; a single 500-subword outlier would otherwise set the peak memory of training.",
    )


class TrainSettings(_Section):
    """The recipe: what the model learns from, and how. Every field changes the trained weights; defaults are
    the tutorial recipe."""

    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate of AdamW.")
    batch_size: int = Field(16, ge=1, le=4096, description="Training sentences per device per step.")
    epochs: int = Field(7, ge=1, le=1000, description="Passes over the training split.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of the optimiser steps spent warming the learning rate up linearly from 0 before "
        "the linear decay (0.1: the first 10%; it keeps the first updates of a fresh head gentle).",
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="A fixed number of warm-up steps instead of warmup_ratio. None: use the ratio."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Steps accumulated per update.")
    seed: int = Field(42, ge=0, description="Seed for weights of the new head, shuffling and dropout.")
    batching: Batching = Field(
        "auto",
        description="Which sentences share a batch. 'random': random batches (the plain recipe). 'length': "
        "sentences of similar length together (less padding) in shuffled batch order. 'static': random "
        "batches padded to a few fixed lengths with a fixed batch size, for CUDA graphs. 'auto': 'static' "
        "on a GPU, 'length' on a CPU.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluated epochs in a row without a validation F1 gain above "
        "early_stopping_threshold; the best epoch is kept. None: train every epoch (the tutorial recipe).",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, le=1, description="Smallest validation F1 gain that counts as an improvement for early stopping."
    )
    lr_scheduler: LrScheduler = Field("linear", description="Learning-rate schedule after the warm-up.")
    optimizer: Optimizer = Field(
        "adamw_torch_fused",
        description="Optimiser (transformers' names); the fused AdamW updates every parameter in one kernel.",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this value; 0 turns clipping off.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Share of each label's probability spread over the other labels in the loss."
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other transformers TrainingArguments field by name, e.g. {adam_beta2: 0.98}. Checked "
        "against the installed transformers before the run starts; fields nerflow sets itself are refused.",
    )

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            from nerflow.tasks.settings.trainer_args import check_trainer_args

            check_trainer_args(args)
        return args


class ComputeSettings(_Section):
    """Where and how fast training runs: numeric precision, compilation, memory trade-offs, processes and
    nodes. The train cache key includes only what changes the weights: precision and the number of
    processes (batch_size is per process)."""

    eval_batch_size: int = Field(64, ge=1, le=4096, description="Sentences per device per evaluation step.")
    precision: Precision = Field(
        "auto", description="'auto': bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."
    )
    compile: CompileMode = Field(
        "auto",
        description="torch.compile the model with CUDA graphs (mode 'reduce-overhead'): short-sentence steps "
        "stop waiting on kernel launches. 'auto': on for CUDA, off on a CPU. A compile failure falls back "
        "to eager execution with a warning; compile time is reported apart from training time.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less GPU memory for about a third more compute."
    )
    auto_batch_size: bool = Field(
        False, description="On CUDA out-of-memory, halve batch_size and try again (transformers' auto_find_batch_size)."
    )
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Training processes per node. None: one per visible GPU (1 on a CPU). More than one "
        "process in all launches the Trainer under torchrun (PyTorch DDP); batch_size stays per process.",
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Nodes taking part in one training run (torchrun --nnodes).")
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d+$",
        description="host:port of the c10d rendezvous (node 0) when nnodes > 1. The node rank is read from "
        "NODE_RANK (or JOB_COMPLETION_INDEX on a Kubernetes indexed Job).",
    )
    rdzv_id: str | None = Field(None, description="Rendezvous id shared by the nodes of one run. None: the run name.")

    @model_validator(mode="after")
    def _multi_node(self) -> ComputeSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("compute.rdzv_endpoint (host:port of node 0) is required when compute.nnodes > 1")
        return self


class RecordSettings(_Section):
    """What a run keeps and logs on the way, and whether it may reuse an earlier run's model: bookkeeping that
    never changes the trained weights."""

    save_total_limit: int = Field(2, ge=1, le=100, description="Epoch checkpoints kept (the best is always kept).")
    logging_steps: int = Field(50, ge=1, description="Log the training loss every N optimiser steps.")
    reuse_cached_model: bool = Field(
        True,
        description="Reuse the model of an earlier run with identical data, tokenizer, checkpoint and "
        "training settings (Prefect cache) instead of training again; false always trains.",
    )


class EvaluationSettings(_Section):
    """How word tags are read from the model's scores, for model selection, evaluation and prediction."""

    decoding: Decoding = Field(
        "iob2",
        description="'iob2': the most likely tag sequence that is valid IOB2 (Viterbi; I-X only after B-X or "
        "I-X), so one entity is never split into two by a stray tag. 'argmax': the most likely tag per word, "
        "what transformers' token-classification pipeline does. Both scores are reported either way.",
    )


class AnalysisSettings(_Section):
    """Why the model errs and where the training data is probably wrong (errors.jsonl, label_issues.jsonl)."""

    worst_sentences: int = Field(
        50, ge=1, le=10_000, description="Test sentences of highest loss written to errors.jsonl."
    )
    label_issues: Literal["off", "on"] = Field(
        "off",
        description="'on': find probably mislabelled training sentences with cleanlab from out-of-fold predictions: "
        "`folds` more trainings of the same recipe, each on the other folds. Never edits the data.",
    )
    folds: int = Field(
        3, ge=2, le=10, description="Folds of the training split for label_issues (k-fold cross-fitting)."
    )


class ExportSettings(_Section):
    """The model as ONNX, for runtimes without PyTorch (model/onnx/, the layout of ONNX repos on the Hub)."""

    onnx: bool = Field(
        False,
        description="Export the trained model to model/onnx/model.onnx (fp32, dynamic batch and sequence) with a "
        "parity report on the test split; the export fails, writing nothing, if fp32 changes any word's tag.",
    )
    int8: bool = Field(
        True, description="Also write model_quantized.onnx (dynamic int8): about twice as fast on a CPU."
    )
    int8_f1_tolerance: float = Field(
        0.01, ge=0, le=1, description="Keep the int8 model only if its test F1 is at most this much below torch's."
    )
    opset: int = Field(18, ge=18, le=23, description="ONNX opset of the export (torch.export writes 18 and later).")


class TrackingSettings(_Section):
    """Experiment tracking. Keys and passwords come from Prefect Secret blocks or the environment, never from here."""

    backends: list[Tracker] = Field(
        default_factory=list,
        description="Where to log the run, several at once allowed: 'wandb' (Weights & Biases), 'mlflow' (an "
        "MLflow tracking server: settings as params, per-epoch and test metrics, card and pictures as "
        "artifacts, a published model as a registered version), 'tensorboard' (event files in the run folder).",
    )
    wandb_project: str = Field("nerflow", min_length=1, description="W&B project name.")
    wandb_entity: str | None = Field(None, description="W&B entity (user or team). None: the key's default.")
    wandb_api_key_block: str = Field(
        "wandb-api-key",
        min_length=1,
        description="Name of the Prefect Secret block holding the W&B API key. Without a block or "
        "WANDB_API_KEY, W&B runs in offline mode.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server URI (http://host:5000). None: MLFLOW_TRACKING_URI from the environment.",
    )
    mlflow_experiment: str = Field("nerflow", min_length=1, description="MLflow experiment the runs are logged to.")
    mlflow_credentials_block: str = Field(
        "mlflow-credentials",
        min_length=1,
        description="Prefect Secret block with the MLflow server's credentials: a token, or user:password. "
        "Without it, MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_USERNAME and _PASSWORD from the environment.",
    )
    mlflow_registered_model: str | None = Field(
        None, description="Registered model a published run becomes a version of. None: the card's model name."
    )


class AlertSettings(_Section):
    """Who hears about a run that failed or crashed (scheduled retraining runs unattended)."""

    notification_block: str | None = Field(
        "custom-webhook/nerflow-alerts",
        description="Prefect notification block, as type/name (a custom webhook, slack-webhook/..., "
        "microsoft-teams-webhook/..., email/...): it gets the run name, the failed task, the first line of "
        "the error and a link to the run. `nerflow alerts create --webhook URL` makes the default one. "
        "None, or no such block: no alerts.",
    )


class CardSettings(_Section):
    """What the Hugging Face model card says."""

    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
        description="Stable model name across runs (card title, S3 folder). None: the Hub repo name if "
        "publishing there, else derived from the checkpoint and the language.",
    )
    license: str = Field("apache-2.0", min_length=1, description="License identifier in the card metadata.")
    widget_examples: list[str] | None = Field(
        None,
        description="Sentences for the Hub inference widget. None: the tutorial's five Bengali examples "
        "for 'bn', built-in examples for 'en', else the first test sentences.",
    )


class PublishSettings(_Section):
    """Where the trained model goes, and the quality gate it must pass first."""

    targets: list[PublishTarget] = Field(
        default_factory=lambda: ["local"],
        min_length=1,
        description="'local' keeps the model in the run folder; 'hub' pushes it to the Hugging Face Hub; "
        "'s3' uploads the run to S3. Several may be chosen.",
    )
    hub_repo_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="Hub model repository, 'owner/name'."
    )
    hub_private: bool = Field(True, description="Create the Hub repository as private.")
    hub_create_pr: bool = Field(False, description="Open a pull request instead of committing to main.")
    hub_tag_runs: bool = Field(False, description="Tag each published commit 'run-<run name>'.")
    hf_token_block: str = Field(
        "hf-token", min_length=1, description="Prefect Secret block holding the Hub token (else HF_TOKEN)."
    )
    s3_uri: str | None = Field(
        None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", description="s3://bucket/prefix for runs."
    )
    aws_credentials_block: str | None = Field(
        None,
        description="Prefect AwsCredentials block (prefect-aws) to use. None: the standard AWS "
        "environment, config files or instance role.",
    )
    min_f1: float | None = Field(
        None, ge=0, le=1, description="Do not publish a model whose word-level test F1 is below this."
    )
    require_improvement: bool = Field(
        False, description="Publish only if the test F1 beats the currently published model's."
    )

    @model_validator(mode="after")
    def _target_settings(self) -> PublishSettings:
        if "hub" in self.targets and not self.hub_repo_id:
            raise ValueError("publish.hub_repo_id is required when targets include 'hub'")
        if "s3" in self.targets and not self.s3_uri:
            raise ValueError("publish.s3_uri is required when targets include 's3'")
        return self


class RunSettings(_Section):
    """One nerflow fine-tuning run: data, base model, tokenization, recipe, compute, records, tracking, card,
    publishing and output."""

    dataset: DatasetSettings = Field(default_factory=DatasetSettings, description="Training data.")
    base_model: BaseModelSettings = Field(
        default_factory=BaseModelSettings, description="Pretrained model to fine-tune."
    )
    tokenize: TokenizeSettings = Field(default_factory=TokenizeSettings, description="Tokenization.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Training recipe.")
    compute: ComputeSettings = Field(default_factory=ComputeSettings, description="Where and how fast training runs.")
    records: RecordSettings = Field(
        default_factory=RecordSettings, description="Checkpoints kept, logging, model reuse."
    )
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings, description="Scoring and decoding.")
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings, description="Error analysis and label issues.")
    export: ExportSettings = Field(default_factory=ExportSettings, description="ONNX export.")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings, description="Experiment tracking.")
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="Alerts for failed runs.")
    card: CardSettings = Field(default_factory=CardSettings, description="Model card.")
    publish: PublishSettings = Field(default_factory=PublishSettings, description="Publishing and quality gate.")
    output_dir: str = Field(
        "runs", min_length=1, description="Folder holding one sub-folder per run (and the shared caches)."
    )
    run_name: str | None = Field(
        None,
        description="Name of this run's folder. None: a timestamp plus the Prefect flow-run name. "
        "Re-using a name resumes from that run's last checkpoint.",
    )
    cache_dir: str | None = Field(
        None, description="Cache for normalised and tokenized datasets. None: OUTPUT_DIR/.cache."
    )
    settings_version: int = Field(
        SETTINGS_VERSION,
        ge=1,
        le=SETTINGS_VERSION,
        description="Version of these settings' names; older ones are migrated (nerflow.tasks.settings.migration).",
    )

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        return migrate(data) if isinstance(data, dict) else data

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, name: str | None) -> str | None:
        if name is not None and not _RUN_NAME.match(name):
            raise ValueError("run_name may hold letters, digits, '.', '_' and '-' (at most 128), no slashes")
        return name

    def resolved_model_name(self) -> str:
        if self.card.model_name:
            return self.card.model_name
        if self.publish.hub_repo_id:
            return self.publish.hub_repo_id.split("/")[-1]
        base = (self.base_model.hub_id or self.base_model.name).rstrip("/").split("/")[-1].split(":")[-1]
        return f"{base}-ner-{self.dataset.resolved_language() or 'custom'}"

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / ".cache"
