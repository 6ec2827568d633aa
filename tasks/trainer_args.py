"""`train.trainer_args`: any transformers TrainingArguments field by name, checked before a run starts.

Names are looked up in the installed transformers (a misspelling gets the closest names), values are
validated against the field's type, and the fields nerflow sets from its own settings or manages for
the pipeline (checkpoints, evaluation, tracking) are refused with the reason.
"""

from __future__ import annotations

import difflib
from typing import Any

# Fields nerflow sets: which setting to use instead, or why nerflow keeps them.
MANAGED = {
    "learning_rate": "use train.learning_rate",
    "per_device_train_batch_size": "use train.batch_size",
    "per_device_eval_batch_size": "use train.eval_batch_size",
    "gradient_accumulation_steps": "use train.gradient_accumulation_steps",
    "num_train_epochs": "use train.epochs",
    "max_steps": "use train.epochs (the schedule, evaluation and checkpoints follow epochs)",
    "weight_decay": "use train.weight_decay",
    "warmup_steps": "use train.warmup_ratio or train.warmup_steps",
    "seed": "use train.seed",
    "data_seed": "use train.seed",
    "lr_scheduler_type": "use train.lr_scheduler",
    "optim": "use train.optimizer",
    "max_grad_norm": "use train.max_grad_norm",
    "gradient_checkpointing": "use train.gradient_checkpointing",
    "activation_checkpointing": "use train.gradient_checkpointing",
    "label_smoothing_factor": "use train.label_smoothing",
    "auto_find_batch_size": "use train.auto_batch_size",
    "bf16": "use train.precision",
    "fp16": "use train.precision",
    "torch_compile": "use train.compile",
    "torch_compile_mode": "use train.compile",
    "save_total_limit": "use train.save_total_limit",
    "logging_steps": "use train.logging_steps",
    "output_dir": "nerflow keeps checkpoints in the run folder",
    "run_name": "nerflow names runs (run_name)",
    "eval_strategy": "nerflow evaluates every epoch to pick the best one",
    "save_strategy": "nerflow saves a checkpoint every epoch to resume from",
    "logging_strategy": "nerflow logs every train.logging_steps steps",
    "load_best_model_at_end": "nerflow keeps the best epoch by validation F1",
    "metric_for_best_model": "nerflow selects by word-level validation F1",
    "greater_is_better": "nerflow selects by word-level validation F1",
    "report_to": "use tracking.backends",
    "logging_dir": "nerflow writes TensorBoard files into the run folder",
    "resume_from_checkpoint": "nerflow resumes from the run's last complete checkpoint",
    "push_to_hub": "use publish.targets (quality gate, one commit per run)",
    "use_cpu": "nerflow uses a GPU when there is one",
    "ddp_backend": "nerflow picks NCCL on GPUs, gloo on CPUs",
    "disable_tqdm": "nerflow reports progress through Prefect",
    "logging_nan_inf_filter": "it reads the loss on the host every step",
}


def training_argument_types() -> dict[str, Any]:
    import typing

    from transformers import TrainingArguments

    return typing.get_type_hints(TrainingArguments)


def check_trainer_args(args: dict[str, Any]) -> None:
    """ValueError naming every unknown, managed or wrongly typed field."""
    import transformers
    from pydantic import TypeAdapter, ValidationError

    types = training_argument_types()
    problems = []
    for name, value in args.items():
        if name in MANAGED:
            problems.append(f"{name}: set by nerflow ({MANAGED[name]})")
        elif name.startswith("hub_"):
            problems.append(f"{name}: set by nerflow (use publish.*: one commit per run, after the quality gate)")
        elif name not in types or name.startswith("_"):
            close = difflib.get_close_matches(name, [n for n in types if n not in MANAGED and not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"{name}: not a TrainingArguments field of transformers {transformers.__version__}{hint}")
        else:
            try:
                TypeAdapter(types[name]).validate_python(value, strict=False)
            except ValidationError as e:
                problems.append(f"{name}: {value!r} is not a valid {types[name]} ({e.errors()[0]['msg']})")
    if problems:
        raise ValueError("train.trainer_args: " + "; ".join(problems))
