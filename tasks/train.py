"""Step 3, train: fine-tune with the transformers Trainer, one checkpoint per epoch, resumable.

The best epoch is chosen by word-level validation F1 (the same scorer the evaluate step uses). A retry
of the task finds the run's last checkpoint and resumes from it instead of starting over.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.settings import ModelSettings, TrackingSettings, TrainSettings
from tasks.metrics import seqeval_scores, word_level_sequences
from tasks.caching import fingerprint
from tasks.retry import unless_bad_input
from tasks.secrets import resolve_secret
from tasks.storage import atomic_dir, atomic_write_json
from tasks.tokenize import TokenizedRef, load_tokenized, load_tokenizer, resolve_checkpoint

log = logging.getLogger(__name__)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


class ModelRef(BaseModel):
    path: str
    run_dir: str
    checkpoint_dir: str
    resumed_from: str | None
    best_checkpoint: str | None
    best_validation_f1: float | None
    device: str
    precision: str
    train_runtime_s: float
    train_samples_per_second: float | None
    epochs: list[dict[str, Any]]
    """One row per evaluated epoch: epoch, train loss, validation precision/recall/F1."""
    reused_from: str | None = None
    """Run folder this model was trained in, when a cache hit reused an earlier run's model."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # called outside a Prefect run (tests, scripts)
        return log


def choose_device(precision: str) -> tuple[str, bool, bool]:
    """(device, bf16, fp16): CUDA when present (bf16 where supported, else fp16), else the CPU in fp32."""
    import torch

    if not torch.cuda.is_available():
        if precision in ("bf16", "fp16"):
            _logger().warning("precision=%s needs a GPU; training in fp32 on the CPU", precision)
        return "cpu", False, False
    if precision == "fp32":
        return "cuda", False, False
    bf16_ok = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise ValueError("train.precision: bf16 was asked for but this GPU does not support it")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    return "cuda", use_bf16, not use_bf16


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def epoch_table(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluated epoch: the last training loss logged before it and the validation scores."""
    rows, loss = [], None
    for entry in log_history:
        if "loss" in entry:
            loss = entry["loss"]
        if "eval_f1" in entry:
            rows.append(
                {
                    "epoch": round(float(entry["epoch"]), 2),
                    "train_loss": round(float(loss), 4) if loss is not None else None,
                    "eval_loss": entry.get("eval_loss"),
                    "val_precision": entry.get("eval_precision"),
                    "val_recall": entry.get("eval_recall"),
                    "val_f1": entry["eval_f1"],
                }
            )
    return rows


def _callbacks_base():
    from transformers import TrainerCallback

    class EpochLogCallback(TrainerCallback):
        """One log line per evaluation: epoch, training loss and validation scores."""

        def __init__(self) -> None:
            self.loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return
            metrics = metrics or {}
            _logger().info(
                "epoch %.0f/%d | step %d/%d | train loss %s | val loss %.4f | val P %.4f R %.4f F1 %.4f",
                state.epoch or 0,
                args.num_train_epochs,
                state.global_step,
                state.max_steps,
                f"{self.loss:.4f}" if self.loss is not None else "n/a",
                metrics.get("eval_loss", float("nan")),
                metrics.get("eval_precision", float("nan")),
                metrics.get("eval_recall", float("nan")),
                metrics.get("eval_f1", float("nan")),
            )

    return EpochLogCallback


def build_callbacks() -> list:
    """Trainer callbacks of a run (tests add a fault-injecting one here)."""
    return [_callbacks_base()()]


def progress_callback(artifact_id: str):
    """Keeps a Prefect progress artifact at the share of training steps done (rank 0 only)."""
    from prefect.artifacts import update_progress_artifact
    from transformers import TrainerCallback

    class ProgressArtifactCallback(TrainerCallback):
        def __init__(self) -> None:
            self.reported = -1.0

        def _report(self, state, force: bool = False) -> None:
            if not state.is_world_process_zero or not state.max_steps:
                return
            share = state.global_step / state.max_steps
            if force or share - self.reported >= 0.02:
                try:
                    update_progress_artifact(artifact_id, progress=round(100 * share, 1))
                    self.reported = share
                except Exception as e:  # progress is informative; never fail training over it
                    log.debug("progress update failed: %s", type(e).__name__)

        def on_step_end(self, args, state, control, **kwargs):
            self._report(state)

        def on_epoch_end(self, args, state, control, **kwargs):
            self._report(state, force=True)

    return ProgressArtifactCallback()


def _make_trainer_class():
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class NerTrainer(Trainer):
        # Word-level metrics map each prediction back to its sentence by position, so evaluation must
        # keep dataset order even when training batches are grouped by length.
        def _get_eval_sampler(self, eval_dataset):
            return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    return NerTrainer


def make_compute_metrics(eval_split, label_names: Sequence[str]):
    """Word-level seqeval on the validation split; checks predictions arrive in dataset order."""
    import numpy as np

    word_ids = list(eval_split["word_ids"])
    word_labels = list(eval_split["word_labels"])
    expected_labels = list(eval_split["labels"])

    def compute_metrics(pred) -> dict[str, float]:
        label_ids = pred.label_ids
        for i in (0, len(expected_labels) // 2, len(expected_labels) - 1):
            got = [int(x) for x in np.asarray(label_ids[i])[: len(expected_labels[i])]]
            if got != list(expected_labels[i]):
                raise RuntimeError("evaluation predictions are not in dataset order; word-level scores would be wrong")
        y_true, y_pred = word_level_sequences(pred.predictions, word_ids, word_labels, label_names)
        s = seqeval_scores(y_true, y_pred)
        return {k: s[k] for k in ("precision", "recall", "f1", "accuracy")}

    return compute_metrics


def argmax_logits(logits, labels):
    # Keep only predicted ids on the way out of each eval batch: no (sentences x length x labels) buffer.
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def configure_wandb(tracking: TrackingSettings, run_dir: Path, run_name: str) -> bool:
    """Set up W&B through its environment variables; offline mode when no key is configured."""
    if tracking.backend != "wandb":
        return False
    os.environ["WANDB_PROJECT"] = tracking.wandb_project
    if tracking.wandb_entity:
        os.environ["WANDB_ENTITY"] = tracking.wandb_entity
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_NAME"] = run_name
    os.environ.setdefault("WANDB_SILENT", "true")
    key = resolve_secret(tracking.wandb_api_key_block, "WANDB_API_KEY")
    if key:
        os.environ["WANDB_API_KEY"] = key
        os.environ.setdefault("WANDB_MODE", "online")
    else:
        _logger().info("no W&B key in Secret block %r or WANDB_API_KEY: W&B runs offline", tracking.wandb_api_key_block)
        os.environ["WANDB_MODE"] = "offline"
    return True


def finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def training_arguments(
    train: TrainSettings,
    checkpoint_dir: Path,
    run_name: str,
    device: str,
    bf16: bool,
    fp16: bool,
    distributed: bool = False,
    use_wandb: bool = False,
):
    """nerflow's Trainer settings (also used by bench/gpu.py, so the benchmark measures these)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        run_name=run_name,
        learning_rate=train.learning_rate,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=train.epochs,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        seed=train.seed,
        data_seed=train.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        save_total_limit=train.save_total_limit,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        optim="adamw_torch_fused",
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        ddp_backend="gloo" if device == "cpu" and distributed else None,
        ddp_find_unused_parameters=False,
        report_to=["wandb"] if use_wandb else "none",
        disable_tqdm=True,
    )


def train_model(
    tokenized: TokenizedRef,
    model: ModelSettings,
    train: TrainSettings,
    tracking: TrackingSettings,
    run_dir: Path,
    run_name: str,
    progress_artifact_id: str | None = None,
) -> ModelRef | None:
    """Fine-tune, resuming from the run's last checkpoint if there is one; save the best model.

    Under torchrun every process calls this; only rank 0 returns a ModelRef (the others None).
    """
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        PrinterCallback,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    label_names = tokenized.label_names
    device, bf16, fp16 = choose_device(train.precision)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    set_seed(train.seed)

    data = load_tokenized(tokenized)
    tokenizer = load_tokenizer(model)
    network = AutoModelForTokenClassification.from_pretrained(
        resolve_checkpoint(model.checkpoint),
        revision=model.revision,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    use_wandb = configure_wandb(tracking, run_dir, run_name)
    args = training_arguments(train, checkpoint_dir, run_name, device, bf16, fp16, distributed, use_wandb)
    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)
    trainer = _make_trainer_class()(
        model=network,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=make_compute_metrics(data["validation"], label_names),
        preprocess_logits_for_metrics=argmax_logits,
        callbacks=build_callbacks() + ([progress_callback(progress_artifact_id)] if progress_artifact_id else []),
    )
    trainer.remove_callback(PrinterCallback)  # EpochLogCallback already logs through Prefect
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        _logger().info("resuming training from %s", resume)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if use_wandb:
            finish_wandb()
    runtime = time.perf_counter() - started

    if not trainer.is_world_process_zero():
        return None  # under DDP, rank 0 alone writes the model folder and the log
    model_dir = run_dir / MODEL_DIR
    with atomic_dir(model_dir, replace=True) as tmp:
        trainer.save_model(str(tmp))  # the best epoch's weights (load_best_model_at_end), tokenizer included
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; settings.json says the same in JSON
    _logger().info("saved model to %s", model_dir)
    epochs = epoch_table(trainer.state.log_history)
    best = trainer.state.best_model_checkpoint
    atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
    del trainer, network
    if device == "cuda":
        torch.cuda.empty_cache()
    return ModelRef(
        path=str(model_dir),
        run_dir=str(run_dir),
        checkpoint_dir=str(checkpoint_dir),
        resumed_from=Path(resume).name if resume else None,
        best_checkpoint=Path(best).name if best else None,
        best_validation_f1=max((e["val_f1"] for e in epochs), default=None),
        device=device,
        precision="bf16" if bf16 else "fp16" if fp16 else "fp32",
        train_runtime_s=round(runtime, 2),
        train_samples_per_second=result.metrics.get("train_samples_per_second"),
        epochs=epochs,
    )


def model_exists(ref: ModelRef | None) -> bool:
    return ref is None or (Path(ref.path) / "config.json").is_file()


def _train_cache_key(context, inputs: dict[str, Any]) -> str:
    # Same data, tokenizer, checkpoint and training settings under the same output root: same model.
    # The run name is not part of it, so a re-run reuses the earlier run's model.
    return "train-" + fingerprint(
        "nerflow-train-v1",
        inputs["tokenized"].cache_key,
        inputs["model"],
        inputs["train"].model_dump(mode="json", exclude={"reuse_cached_model"}),
        inputs["tracking"],
        str(Path(inputs["run_dir"]).resolve().parent),
    )


@task(
    name="train",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=_train_cache_key),
    persist_result=True,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=unless_bad_input,
)
def train_task(
    tokenized: TokenizedRef,
    model: ModelSettings,
    train: TrainSettings,
    tracking: TrackingSettings,
    run_dir: str,
    run_name: str,
) -> ModelRef | None:
    """Train on the GPU when there is one (several processes: torchrun); a retry resumes from the last
    epoch checkpoint."""
    from tasks.distributed import launch_distributed, world_size

    logger = get_run_logger()
    progress = str(create_progress_artifact(progress=0.0, key="training-progress", description="Share of training steps done"))
    if world_size(train) > 1:
        ref = launch_distributed(tokenized, model, train, tracking, Path(run_dir), run_name, logger.info, progress)
    else:
        ref = train_model(tokenized, model, train, tracking, Path(run_dir), run_name, progress)
    if ref is None:
        logger.info("training done on this node; the node holding rank 0 evaluates and publishes")
        return None
    logger.info(
        "trained on %s (%s) in %.1f s; best validation F1 %s%s",
        ref.device,
        ref.precision,
        ref.train_runtime_s,
        ref.best_validation_f1,
        f" (resumed from {ref.resumed_from})" if ref.resumed_from else "",
    )
    create_table_artifact(key="training-epochs", table=ref.epochs, description="Per epoch: losses and validation scores (word level)")
    return ref
