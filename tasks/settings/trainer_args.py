"""`train.trainer_args`: any transformers TrainingArguments field by name, checked before a run starts.

Names are looked up in the installed transformers (a misspelling gets the closest names), values are
validated against the field's type, and the fields nerflow sets from its own settings or manages for
the pipeline (checkpoints, evaluation, tracking) are refused with the reason.
"""

from __future__ import annotations

import difflib
import functools
import json
from typing import Any

# Names users bring from transformers' TrainingArguments and run_ner.py, and the setting that holds each.
SETTING_ALIASES = {
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "compute.eval_batch_size",
    "learning_rate": "train.learning_rate",
    "lr": "train.learning_rate",
    "weight_decay": "train.weight_decay",
    "warmup_ratio": "train.warmup_ratio",
    "warmup_steps": "train.warmup_steps",
    "seed": "train.seed",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "lr_scheduler_type": "train.lr_scheduler",
    "optim": "train.optimizer",
    "max_grad_norm": "train.max_grad_norm",
    "label_smoothing_factor": "train.label_smoothing",
    "gradient_checkpointing": "compute.gradient_checkpointing",
    "auto_find_batch_size": "compute.auto_batch_size",
    "save_total_limit": "records.save_total_limit",
    "logging_steps": "records.logging_steps",
    "bf16": "compute.precision",
    "fp16": "compute.precision",
    "torch_compile": "compute.compile",
    "model_name_or_path": "base_model.name",
    "dataset_name": "dataset.source",
    "dataset_config_name": "dataset.config",
    "train_file": "dataset.source (a folder holding train, validation and test files)",
    "text_column_name": "dataset.tokens_column",
    "label_column_name": "dataset.tags_column",
    "max_seq_length": "tokenize.max_length",
    "label_all_tokens": "tokenize.alignment",
    "push_to_hub": "publish.targets",
    "hub_model_id": "publish.hub_repo_id",
    "report_to": "tracking.backends",
}

# Fields nerflow manages that no setting of the same meaning holds (those that one does are in
# SETTING_ALIASES): why nerflow keeps them.
MANAGED = {
    "max_steps": "use train.epochs (the schedule, evaluation and checkpoints follow epochs)",
    "data_seed": "use train.seed",
    "activation_checkpointing": "use compute.gradient_checkpointing",
    "torch_compile_mode": "use compute.compile",
    "output_dir": "nerflow keeps checkpoints in the run folder",
    "run_name": "nerflow names runs (run_name)",
    "eval_strategy": "nerflow evaluates every epoch to pick the best one",
    "save_strategy": "nerflow saves a checkpoint every epoch to resume from",
    "logging_strategy": "nerflow logs every records.logging_steps steps",
    "load_best_model_at_end": "nerflow keeps the best epoch by validation F1",
    "metric_for_best_model": "nerflow selects by word-level validation F1",
    "greater_is_better": "nerflow selects by word-level validation F1",
    "logging_dir": "nerflow writes TensorBoard files into the run folder",
    "resume_from_checkpoint": "nerflow resumes from the run's last complete checkpoint",
    "use_cpu": "nerflow uses a GPU when there is one",
    "ddp_backend": "nerflow picks NCCL on GPUs, gloo on CPUs",
    "disable_tqdm": "nerflow reports progress through Prefect",
    "logging_nan_inf_filter": "it reads the loss on the host every step",
}


def managed(name: str) -> str | None:
    """Why nerflow sets this TrainingArguments field itself (None: a user may set it)."""
    if name in MANAGED:
        return MANAGED[name]
    if name in SETTING_ALIASES and SETTING_ALIASES[name].startswith(("train.", "tracking.", "publish.")):
        return f"use {SETTING_ALIASES[name]}"
    if name.startswith("hub_"):
        return "use publish.*: one commit per run, after the quality gate"
    return None


def training_argument_types() -> dict[str, Any]:
    import typing

    from transformers import TrainingArguments

    return typing.get_type_hints(TrainingArguments)


def check_trainer_args(args: dict[str, Any]) -> None:
    """ValueError naming every unknown, managed or wrongly typed field (the settings validator: no file
    is read here, the run policy has not looked at the paths yet)."""
    import transformers
    from pydantic import TypeAdapter, ValidationError

    types = training_argument_types()
    problems = []
    for name, value in args.items():
        if reason := managed(name):
            problems.append(f"{name}: set by nerflow ({reason})")
        elif name not in types or name.startswith("_"):
            close = difflib.get_close_matches(name, [n for n in types if not managed(n) and not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"{name}: not a TrainingArguments field of transformers {transformers.__version__}{hint}")
        else:
            try:
                TypeAdapter(types[name]).validate_python(value, strict=False)
            except ValidationError as e:
                problems.append(f"{name}: {value!r} is not a valid {types[name]} ({e.errors()[0]['msg']})")
    if problems:
        raise ValueError("train.trainer_args: " + "; ".join(problems))


def check_trainer_values(args: dict[str, Any]) -> None:
    """InputError with what transformers itself says of the values (torch_empty_cache_steps=-1, a
    DeepSpeed config without deepspeed installed, an FSDP config file that is not JSON): TrainingArguments
    is built with them once, before any data is read, and after the run policy checked their paths."""
    from nerflow.tasks.runtime.errors import InputError

    if args and (problem := _refused_by_transformers(json.dumps(args, sort_keys=True, default=str))):
        raise InputError(f"train.trainer_args: {problem}")


@functools.lru_cache(maxsize=64)
def _refused_by_transformers(args_json: str) -> str | None:
    import tempfile

    from transformers import TrainingArguments

    try:
        with tempfile.TemporaryDirectory() as scratch:
            TrainingArguments(output_dir=scratch, **json.loads(args_json))
    except ImportError as e:  # DeepSpeed and friends are optional packages
        return f"needs a package that is not installed ({str(e).splitlines()[0][:200]})"
    except (ValueError, TypeError, OSError) as e:
        return str(e).strip().splitlines()[0][:300]
    return None
