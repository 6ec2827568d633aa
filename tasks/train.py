"""train: fine-tune with the transformers Trainer, one checkpoint per epoch, resumable.

Batches come from nerflow's sampler (nerflow.tasks.training.batching). After each epoch the model is scored on the
validation split at word level, with the code and decoding the evaluate step uses, and the best epoch
is kept. On CUDA the model is compiled with CUDA graphs (compute.compile); a compile failure falls back
to eager execution. A retry of the task finds the run's last checkpoint and resumes from it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.logging import get_run_logger

from nerflow.tasks.refs import ModelRef, TrainJob
from nerflow.tasks.reporting.trackers import tracking_environment
from nerflow.tasks.runtime.caching import JSON_RESULTS, CachedStep, fingerprint, link_or_copy
from nerflow.tasks.runtime.files import atomic_dir, atomic_write_json, is_sealed
from nerflow.tasks.runtime.logs import run_logger
from nerflow.tasks.runtime.retry import unless_deterministic
from nerflow.tasks.runtime.secrets import scoped_environ
from nerflow.tasks.scoring.inference import choose_device
from nerflow.tasks.settings import BaseModelSettings
from nerflow.tasks.training.distributed import RESULT_FILE, launch_distributed, world_size
from nerflow.tasks.training.pretrained import head_labels, head_rows, load_network, load_tokenizer

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger(log)


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    from nerflow.tasks.training.trainer import last_complete_checkpoint

    found = last_complete_checkpoint(checkpoint_dir)
    return str(found) if found else None


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


def finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def training_device(precision: str) -> tuple[str, bool, bool]:
    device, bf16, fp16 = choose_device(precision)
    if device == "cpu" and precision in ("bf16", "fp16"):
        _logger().warning("precision=%s needs a GPU; training in fp32 on the CPU", precision)
    return device, bf16, fp16


def pretrained_network(pretrained: BaseModelSettings, labels: list[str]):
    """The checkpoint with a head for these labels: a checkpoint without a token-classification head gets
    a new one; one with a head keeps the rows of the labels they share (nerflow.tasks.training.pretrained.head_rows)."""
    options = {"revision": pretrained.revision, "trust_remote_code": pretrained.trust_remote_code}
    old = head_labels(pretrained)
    rows = head_rows(labels, old, pretrained)
    if old is None:
        return load_network(
            pretrained.name,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            **options,
        )
    network = load_network(pretrained.name, **options)
    replace_head(network, labels, rows)
    kept = [labels[i] for i in sorted(rows)]
    _logger().info(
        "head of %s: rows kept for %s; new rows for %s",
        pretrained.name,
        kept or "no label",
        [n for n in labels if n not in kept] or "no label",
    )
    return network


def replace_head(network, labels: list[str], rows: dict[int, int]) -> None:
    """A new classifier for `labels`, initialised as transformers does, whose rows listed in `rows`
    (new label id -> old row) start from the old classifier's."""
    import torch

    old = network.classifier
    new = torch.nn.Linear(old.in_features, len(labels)).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight.normal_(0.0, getattr(network.config, "initializer_range", 0.02))
        new.bias.zero_()
        for i, row in rows.items():
            new.weight[i] = old.weight[row]
            new.bias[i] = old.bias[row]
    network.classifier = new
    network.num_labels = network.config.num_labels = len(labels)
    network.config.id2label, network.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}


def build_trainer(
    job: TrainJob, device: str, bf16: bool, fp16: bool, compile_model: bool, report_to: list[str], progress=None
):
    """The Trainer for this job: pretrained weights with a fresh head for the dataset's labels."""
    from transformers import PrinterCallback

    from nerflow.tasks.training.batching import PadCollator, pad_multiple, resolve_batching
    from nerflow.tasks.training.trainer import (
        ConsoleProgress,
        NerTrainer,
        ProgressCallback,
        build_callbacks,
        training_arguments,
    )

    labels = job.tokenized.label_names
    data = job.tokenized.load()
    tokenizer = load_tokenizer(job.base_model)
    network = pretrained_network(job.base_model, labels)
    network.config.nerflow_decoding = job.decoding  # nerflow predict reads it from config.json
    network.config.nerflow_tag_scheme = job.tokenized.tag_scheme  # and writes tags back in the source's scheme
    batching = resolve_batching(job.recipe.batching, device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    args = training_arguments(
        job.recipe,
        job.compute,
        job.records,
        job.checkpoint_dir,
        job.run_name,
        device,
        bf16,
        fp16,
        compile_model,
        distributed,
        report_to,
    )
    trainer = NerTrainer(
        model=network,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=PadCollator(tokenizer.pad_token_id, pad_multiple(batching, device), job.tokenized.max_length),
        callbacks=build_callbacks(_logger, job.recipe) + ([ProgressCallback(progress)] if progress else []),
        batching=batching,
        decoding=job.decoding,
        label_names=labels,
        pad_multiple=pad_multiple(batching, device),
    )
    trainer.remove_callback(PrinterCallback)  # EpochLogCallback already logs through Prefect
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ConsoleProgress):
            callback.trainer = trainer  # its last loss, for the progress line
    return trainer


def fit(job: TrainJob, device: str, bf16: bool, fp16: bool, compile_model: bool, report_to: list[str], progress=None):
    """Train (resuming from the last checkpoint); if torch.compile fails, warn once and go on eagerly.

    Returns (trainer, train output, checkpoint resumed from, whether the model ran compiled)."""
    from nerflow.tasks.training.trainer import is_compile_error

    if compile_model:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly
    while True:
        trainer = build_trainer(job, device, bf16, fp16, compile_model, report_to, progress)
        resume = last_checkpoint(job.checkpoint_dir)
        if resume:
            _logger().info("resuming training from %s", resume)
        try:
            return trainer, trainer.train(resume_from_checkpoint=resume), resume, compile_model
        except Exception as exc:
            if not (compile_model and is_compile_error(exc)):
                raise
            _logger().warning(
                "torch.compile failed (%s: %s); training without compilation", type(exc).__name__, str(exc)[:200]
            )
            compile_model = False


def report_end(trainer, runtime: float, compile_s: float | None, progress) -> None:
    """How training ended, in the log and the progress artifact: compile time apart, early stopping."""
    from nerflow.tasks.training.trainer import early_stop_reason

    notes = [f"{runtime - (compile_s or 0):.1f} s training"] + (
        [f"{compile_s:.1f} s compiling (torch.compile)"] if compile_s is not None else []
    )
    if compile_s is not None:
        _logger().info("training took %.1f s, of which %.1f s compiling (torch.compile)", runtime, compile_s)
    if stopped := early_stop_reason(trainer):
        notes.append(stopped)
    if progress is not None:
        progress.report(
            round(100 * trainer.state.global_step / max(trainer.state.max_steps, 1), 1),
            "Training done: " + "; ".join(notes),
        )


def save_best_model(trainer, run_dir: Path) -> Path:
    """The best epoch's weights and the tokenizer, swapped into run_dir/model in one rename."""
    model_dir = run_dir / MODEL_DIR
    with atomic_dir(model_dir, replace=True) as tmp:
        trainer.save_model(str(tmp))  # load_best_model_at_end: the best epoch's weights
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; settings.json says the same in JSON
    atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
    _logger().info("saved model to %s", model_dir)
    return model_dir


def train_model(job: TrainJob) -> ModelRef | None:
    """Fine-tune, resuming from the run's last checkpoint if there is one; save the best model.

    Under torchrun every process calls this; only rank 0 returns a ModelRef (the others None)."""
    from transformers import set_seed

    from nerflow.tasks.runtime.logs import quiet_third_party

    quiet_third_party()
    device, bf16, fp16 = training_device(job.compute.precision)
    compile_model = job.compute.compile == "on" or (job.compute.compile == "auto" and device == "cuda")
    set_seed(job.recipe.seed)
    trainer, result, resume, compiled, runtime, compile_s = fit_reported(job, device, bf16, fp16, compile_model)
    if not trainer.is_world_process_zero():
        return None  # under DDP, rank 0 alone writes the model folder and the log
    model_dir = save_best_model(trainer, Path(job.run_dir))
    epochs, stopped = epochs_with_stop_note(trainer)
    best = trainer.state.best_model_checkpoint
    return ModelRef(
        path=str(model_dir),
        run_dir=job.run_dir,
        checkpoint_dir=str(job.checkpoint_dir),
        resumed_from=Path(resume).name if resume else None,
        best_checkpoint=Path(best).name if best else None,
        best_validation_f1=max((e["val_f1"] for e in epochs), default=None),
        device=device,
        precision="bf16" if bf16 else "fp16" if fp16 else "fp32",
        batching=trainer.batching,
        compiled=compiled,
        compile_s=round(compile_s, 2),
        decoding=job.decoding,
        train_runtime_s=round(runtime, 2),
        train_samples_per_second=result.metrics.get("train_samples_per_second"),
        epochs=epochs,
        stopped_early=stopped,
    )


def fit_reported(job: TrainJob, device: str, bf16: bool, fp16: bool, compile_model: bool):
    """fit() with the run's trackers and live progress around it; also the wall time and the compile
    time it took: (trainer, result, resumed checkpoint, compiled, runtime_s, compile_s)."""
    from nerflow.tasks.training.trainer import BackgroundProgress, compile_seconds

    # Keys and addresses for the Trainer's live loggers, set for the training call only.
    tracking_env = tracking_environment(job.tracking, Path(job.run_dir), job.run_name, job.mlflow_run_id)
    report_to = [b for b in job.tracking.backends if b != "mlflow" or job.mlflow_run_id]
    progress = BackgroundProgress(job.progress_artifact_id) if job.progress_artifact_id else None
    # Reading compile counters imports torch._dynamo: only worth it when something is compiled.
    compile_before, started = compile_seconds() if compile_model else 0.0, time.perf_counter()
    try:
        with scoped_environ(tracking_env):
            try:
                trainer, result, resume, compiled = fit(job, device, bf16, fp16, compile_model, report_to, progress)
            finally:
                if "wandb" in report_to:
                    finish_wandb()
        runtime = time.perf_counter() - started
        compile_s = compile_seconds() - compile_before if compile_model else 0.0
        if trainer.is_world_process_zero():
            report_end(trainer, runtime, compile_s if compiled else None, progress)
    finally:
        if progress is not None:
            progress.close()
    return trainer, result, resume, compiled, runtime, compile_s


def epochs_with_stop_note(trainer) -> tuple[list[dict], str | None]:
    """The per-epoch table; when early stopping ended training, its reason on the last epoch."""
    from nerflow.tasks.training.trainer import early_stop_reason

    stopped = early_stop_reason(trainer)
    epochs = epoch_table(trainer.state.log_history)
    if stopped and epochs:
        for row in epochs:
            row["note"] = ""
        epochs[-1]["note"] = stopped
    return epochs, stopped


def model_exists(ref: ModelRef | None) -> bool:
    """A cached model is usable only if its folder is still complete (sealed, every file its size)."""
    return ref is None or is_sealed(Path(ref.path))


def _train_cache_key(context, inputs: dict[str, Any]) -> str:
    # What changes the weights, under the same output root: the data as tokenized, the base model and its
    # weights, the recipe, the decoding that picks the best epoch, precision and the number of processes
    # (batch_size is per process). Not the run name (a re-run reuses the earlier run's model), tracking,
    # records (logging, checkpoints kept) or compute that only changes speed and memory.
    job: TrainJob = inputs["job"]
    return "train-" + fingerprint(
        "nerflow-train-v4",
        job.tokenized.cache_key,
        job.base_model.model_dump(mode="json", exclude={"hub_id"}),
        job.weights,
        job.recipe,
        job.decoding,
        job.compute.precision,
        job.compute.nproc_per_node,
        job.compute.nnodes,
        str(Path(job.run_dir).resolve().parent),
    )


@task(
    name="train",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=_train_cache_key),
    **JSON_RESULTS,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=unless_deterministic,
)
def train_task(job: TrainJob) -> ModelRef | None:
    """Train on the GPU when there is one (several processes: torchrun); a retry resumes from the last
    epoch checkpoint."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        progress=0.0, key="training-progress", description="Share of training steps done"
    )
    job = job.model_copy(update={"progress_artifact_id": str(progress)})
    ref = launch_distributed(job, logger.info) if world_size(job.compute) > 1 else train_model(job)
    if ref is None:
        logger.info("training done on this node; the node holding rank 0 evaluates and publishes")
        return None
    logger.info(
        "trained on %s (%s, %s batches%s) in %.1f s; best validation F1 %.4f%s",
        ref.device,
        ref.precision,
        ref.batching,
        f", compiled in {ref.compile_s:.1f} s" if ref.compiled else "",
        ref.train_runtime_s,
        ref.best_validation_f1 or 0.0,
        f" (resumed from {ref.resumed_from})" if ref.resumed_from else "",
    )
    create_table_artifact(
        key="training-epochs", table=ref.epochs, description="Per epoch: losses and validation scores (word level)"
    )
    return ref


def adopt_model(model: ModelRef, job: TrainJob) -> ModelRef:
    """A cached model trained in an earlier run, linked (or copied) into this run's folder with its log."""
    run_dir, source_run = Path(job.run_dir), Path(model.run_dir)
    if source_run.resolve() == run_dir.resolve():
        return model
    with atomic_dir(run_dir / MODEL_DIR, replace=True) as tmp:
        shutil.copytree(model.path, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
    if (source_run / "train_log.json").is_file():
        shutil.copy2(source_run / "train_log.json", run_dir / "train_log.json")
    return model.model_copy(
        update={
            "path": str(run_dir / MODEL_DIR),
            "run_dir": str(run_dir),
            "checkpoint_dir": str(job.checkpoint_dir),
            "reused_from": model.reused_from or str(source_run),
        }
    )


TRAIN = CachedStep(train_task, model_exists, adopt=adopt_model, refresh=lambda job: not job.records.reuse_cached_model)


def torchrun_main(argv: list[str]) -> int:
    """Entry point of each torchrun process: `python -m nerflow.tasks.train JOB_FILE`
    (nerflow.tasks.training.distributed)."""
    from nerflow.tasks.runtime.files import hold_training_lock
    from nerflow.tasks.runtime.lifeline import tie_to_lifeline

    tie_to_lifeline()  # gone with torchrun, which is gone with the flow process
    rank = int(os.environ.get("RANK", "0"))
    # force: importing Prefect already configured handlers that would swallow these lines.
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s", force=True
    )
    job = TrainJob.model_validate_json(Path(argv[0]).read_text(encoding="utf-8"))
    hold_training_lock(Path(job.run_dir))
    ref = train_model(job)
    if ref is not None:
        atomic_write_json(Path(job.run_dir) / RESULT_FILE, ref.model_dump(mode="json"))
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main(sys.argv[1:]))
