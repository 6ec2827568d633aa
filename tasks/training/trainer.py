"""The transformers Trainer as nerflow runs it: its sampler, word-level validation, callbacks, arguments.

Imported only when a model is actually trained (it imports torch and transformers), so a cached re-run
of the flow never pays for it.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from nerflow.tasks.runtime.files import is_sealed, seal
from nerflow.tasks.scoring.inference import predict_tokenized
from nerflow.tasks.scoring.metrics import seqeval_scores, word_level_sequences
from nerflow.tasks.settings import ComputeSettings, RecordSettings, TrainSettings
from nerflow.tasks.training.batching import train_sampler

log = logging.getLogger(__name__)
VALIDATION_METRICS = ("precision", "recall", "f1", "accuracy")
SAVE_RETRY_DELAY_S = 5.0


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest sealed checkpoint; incomplete ones (a save cut short by a kill, a power loss or a full
    disk) are newer than it and are removed, so the Trainer never tries to resume from them."""
    if not Path(checkpoint_dir).is_dir():
        return None
    found = sorted(
        (p for p in Path(checkpoint_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for folder in found:
        if is_sealed(folder):
            return folder
        log.warning("removing incomplete checkpoint %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


class NerTrainer(Trainer):
    """Batches from nerflow's sampler (nerflow.tasks.training.batching); validation scored per word, decoded as the
    evaluate step decodes, by the same inference code (no logits buffer, dataset order kept)."""

    def __init__(
        self, *args: Any, batching: str, decoding: str, label_names: list[str], pad_multiple: int | None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.batching, self.decoding, self.label_names, self.pad_multiple = (
            batching,
            decoding,
            label_names,
            pad_multiple,
        )
        self.last_loss: torch.Tensor | None = None

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Kept on the device: the console reads it every few seconds, not every step (no host sync).
        loss = super().training_step(*args, **kwargs)
        self.last_loss = loss.detach()
        return loss

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        lengths = [len(ids) for ids in dataset["input_ids"]]
        sampler = train_sampler(self.batching, lengths, self.args.per_device_train_batch_size, seed)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _save_checkpoint(self, model, trial) -> None:
        """Save, retrying once if the save fails (a full disk, a flaky network filesystem); seal the
        checkpoint (fsynced, its files listed) before the Trainer's rotation may delete older ones, so
        a kill at any moment leaves at least one sealed checkpoint to resume from."""
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            for attempt in (1, 2):
                try:
                    super()._save_checkpoint(model, trial)
                    break
                except OSError as exc:
                    if attempt == 2:
                        raise
                    log.warning("saving %s failed (%s); removing it and trying once more", folder.name, exc)
                    shutil.rmtree(folder, ignore_errors=True)
                    time.sleep(SAVE_RETRY_DELAY_S)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's RNG state is in the folder
        if self.args.should_save:
            seal(folder)
            rotate_checkpoints(folder.parent, limit, self.state.best_model_checkpoint, use_mtime=True)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        split = eval_dataset if eval_dataset is not None else self.eval_dataset
        network = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        was_training = network.training
        network.eval()
        started = time.perf_counter()
        predictions = predict_tokenized(
            network,
            split,
            self.args.per_device_eval_batch_size,
            self.label_names,
            pad_multiple=self.pad_multiple,
            autocast_dtype=torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None,
        )
        network.train(was_training)
        scores = seqeval_scores(
            *word_level_sequences(predictions.word_scores, list(split["word_labels"]), self.label_names, self.decoding)
        )
        metrics = {f"{metric_key_prefix}_{k}": scores[k] for k in VALIDATION_METRICS}
        if predictions.loss is not None:
            metrics[f"{metric_key_prefix}_loss"] = predictions.loss
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class EpochLogCallback(TrainerCallback):
    """One log line per evaluation: epoch, training loss and validation scores."""

    def __init__(self, logger: Callable[[], logging.Logger | logging.LoggerAdapter]) -> None:
        self.logger, self.loss = logger, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        metrics = metrics or {}
        self.logger().info(
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


class BackgroundProgress:
    """Sends the latest share of steps done to a Prefect progress artifact from a thread of its own, so
    the training loop never waits on the API; values that arrive while one is being sent are coalesced."""

    def __init__(self, artifact_id: str) -> None:
        self.artifact_id = artifact_id
        self._latest: tuple[float, str | None] | None = None
        self._closed = False
        self._wake = threading.Condition()
        # The Prefect API settings of the run live in context variables: the thread runs in a copy.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._send_loop,), name="nerflow-progress", daemon=True
        )
        self._thread.start()

    def report(self, percent: float, description: str | None = None) -> None:
        with self._wake:
            self._latest = (percent, description)
            self._wake.notify()

    def close(self, timeout_s: float = 30) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout_s)

    def _send_loop(self) -> None:
        from prefect.artifacts import update_progress_artifact

        sent = None
        while True:
            with self._wake:
                self._wake.wait_for(lambda sent=sent: self._closed or self._latest != sent)
                latest, closed = self._latest, self._closed
            if latest is not None and latest != sent:
                try:
                    update_progress_artifact(self.artifact_id, progress=latest[0], description=latest[1])
                except Exception as e:  # progress is informative; never fail training over it
                    log.debug("progress update failed: %s", type(e).__name__)
                sent = latest
            if closed:
                return


class LossEachEpoch(TrainerCallback):
    """A training-loss log entry at the end of every epoch, whatever records.logging_steps says: a short
    epoch (fewer steps than logging_steps) still gets its loss in the log, the epoch table and the card."""

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_log = True  # the Trainer logs once per step at most: no double entry


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60} m {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class ConsoleProgress(TrainerCallback):
    """A live progress line while training (rank 0): step, epoch, loss, rate, time left. On a terminal
    a bar redrawn in place on stderr; otherwise (a worker's log, a pipe) a log line every
    `every_s` seconds."""

    def __init__(
        self, logger: Callable[[], logging.Logger | logging.LoggerAdapter], every_s: float = 10.0, stream=None
    ) -> None:
        import sys

        self.logger, self.every_s, self.stream = logger, every_s, stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.trainer: NerTrainer | None = None  # set once the trainer exists: its last loss
        self.started = self.last_shown = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_shown = time.monotonic()
        self.first_step = state.global_step  # a resumed run counts its rate from here

    def line(self, state) -> str:
        elapsed = time.monotonic() - self.started
        rate = (state.global_step - self.first_step) / elapsed if elapsed > 0 else 0.0
        loss = self.trainer.last_loss if self.trainer is not None else None
        left = f"{_duration((state.max_steps - state.global_step) / rate)} left" if rate > 0 else "time left -"
        return (
            f"training: step {state.global_step}/{state.max_steps} | epoch "
            f"{state.epoch or 0:.2f}/{state.num_train_epochs:g} | "
            f"loss {f'{float(loss):.4f}' if loss is not None else '-'} | {rate:.2f} steps/s | {left}"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        if self.tty and now - self.last_shown >= 0.5:
            width = 24
            filled = int(width * state.global_step / max(state.max_steps, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line(state)}\033[K")
            self.stream.flush()
            self.last_shown = now
        elif not self.tty and now - self.last_shown >= self.every_s:
            self.logger().info(self.line(state))
            self.last_shown = now

    def on_train_end(self, args, state, control, **kwargs):
        if self.tty and state.is_world_process_zero:
            self.stream.write("\n")
            self.stream.flush()


class ProgressCallback(TrainerCallback):
    """Keeps the run's progress artifact at the share of training steps done (rank 0 only)."""

    def __init__(self, progress: BackgroundProgress, step_share: float = 0.02) -> None:
        self.progress, self.step_share, self.reported = progress, step_share, -1.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.max_steps:
            share = state.global_step / state.max_steps
            if share - self.reported >= self.step_share:
                self.progress.report(round(100 * share, 1))
                self.reported = share

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.max_steps:
            self.progress.report(round(100 * state.global_step / state.max_steps, 1))


class EarlyStopReport(TrainerCallback):
    """Records when and why early stopping ended training, for the log, the epoch table and the card."""

    def __init__(
        self, patience: int, threshold: float, logger: Callable[[], logging.Logger | logging.LoggerAdapter]
    ) -> None:
        self.patience, self.threshold, self.logger, self.reason = patience, threshold, logger, None

    def on_train_end(self, args, state, control, **kwargs):
        if state.epoch is not None and state.epoch < args.num_train_epochs - 1e-6:
            self.reason = (
                f"stopped after epoch {state.epoch:.0f} of {args.num_train_epochs:.0f}: validation F1 did not "
                "improve by "
                f"more than {self.threshold} for {self.patience} epoch(s) in a row (best {state.best_metric:.4f})"
            )
            if state.is_world_process_zero:
                self.logger().info(self.reason)


def build_callbacks(
    logger: Callable[[], logging.Logger | logging.LoggerAdapter], recipe: TrainSettings | None = None
) -> list[TrainerCallback]:
    """Trainer callbacks of a run (tests add a fault-injecting one here)."""
    callbacks: list[TrainerCallback] = [EpochLogCallback(logger), LossEachEpoch(), ConsoleProgress(logger)]
    if recipe is not None and recipe.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks += [
            EarlyStoppingCallback(recipe.early_stopping_patience, recipe.early_stopping_threshold),
            EarlyStopReport(recipe.early_stopping_patience, recipe.early_stopping_threshold, logger),
        ]
    return callbacks


def early_stop_reason(trainer: Trainer) -> str | None:
    return next((cb.reason for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStopReport)), None)


def training_arguments(
    recipe: TrainSettings,
    compute: ComputeSettings,
    records: RecordSettings,
    checkpoint_dir: Path,
    run_name: str,
    device: str,
    bf16: bool,
    fp16: bool,
    compile_model: bool = False,
    distributed: bool = False,
    report_to: list[str] | None = None,
) -> TrainingArguments:
    """nerflow's Trainer settings (also used by bench/gpu.py, so the benchmark measures these)."""
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        run_name=run_name,
        learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=compute.eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_train_epochs=recipe.epochs,
        weight_decay=recipe.weight_decay,
        # transformers reads a value below 1 as a share of the steps.
        warmup_steps=recipe.warmup_steps if recipe.warmup_steps is not None else recipe.warmup_ratio,
        seed=recipe.seed,
        data_seed=recipe.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=records.logging_steps,
        # The NaN filter reads the loss on the host every step: a GPU would wait for each step to finish.
        logging_nan_inf_filter=False,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        save_total_limit=records.save_total_limit,
        optim=recipe.optimizer,
        lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm,
        activation_checkpointing=compute.gradient_checkpointing,
        label_smoothing_factor=recipe.label_smoothing,
        auto_find_batch_size=compute.auto_batch_size,
        bf16=bf16,
        fp16=fp16,
        torch_compile=compile_model,
        # CUDA graphs replay a whole step with one launch; a CPU has no graphs to replay.
        torch_compile_mode="reduce-overhead" if compile_model and device == "cuda" else None,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        ddp_backend="gloo" if device == "cpu" and distributed else None,
        ddp_find_unused_parameters=False,
        report_to=report_to or "none",
        disable_tqdm=True,
        **recipe.trainer_args,  # checked against TrainingArguments when the settings were read
    )


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (forward and backward graphs)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # a torch without these counters: report no compile time rather than fail
        return 0.0


def is_compile_error(exc: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo, inductor, CUDA graph trees)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(("torch._dynamo", "torch._inductor")):
            return True
        tb = tb.tb_next
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))
