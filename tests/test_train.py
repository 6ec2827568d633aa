"""The train step's plain functions on the tiny BERT: what reaches the Trainer, what comes back, resume,
and the fallback when torch.compile fails."""

import json
import logging
from pathlib import Path

import pytest

import nerflow.tasks.train
from conftest import prepare, train_job, write_synthetic_dataset
from nerflow.tasks.refs import TrainJob
from nerflow.tasks.training.batching import PadCollator, ShuffledLengthGroups


@pytest.fixture(scope="module")
def job_for(tiny_bert, tmp_path_factory):
    """A TrainJob on 160 synthetic sentences; keyword sections override the settings."""
    from conftest import tiny_run_settings

    root = tmp_path_factory.mktemp("train")
    data = write_synthetic_dataset(root / "synthetic")

    def make(run_name: str, **sections) -> TrainJob:
        train = {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, **sections.pop("train", {})}
        settings = tiny_run_settings(
            tiny_bert,
            root / "runs",
            dataset={"source": str(data), "max_train_samples": None, "max_eval_samples": None},
            train=train,
            **sections,
        )
        _, tokenized = prepare(settings)
        return train_job(settings, tokenized, root / "runs" / run_name, run_name)

    return make


def test_the_settings_reach_the_trainer(job_for):
    job = job_for(
        "args", train={"warmup_ratio": 0.2, "weight_decay": 0.05, "seed": 11}, compute={"eval_batch_size": 32}
    )
    trainer = nerflow.tasks.train.build_trainer(job, "cpu", bf16=False, fp16=False, compile_model=False, report_to=[])
    args = trainer.args
    assert (args.learning_rate, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (5e-3, 16, 32)
    assert (args.num_train_epochs, args.weight_decay, args.seed, args.data_seed) == (2, 0.05, 11, 11)
    assert args.warmup_steps == 0.2 and args.get_warmup_steps(100) == 20  # a ratio: 20% of the steps
    assert (args.eval_strategy, args.save_strategy, args.load_best_model_at_end, args.metric_for_best_model) == (
        "epoch",
        "epoch",
        True,
        "f1",
    )
    assert not args.torch_compile and not args.logging_nan_inf_filter and args.report_to == []
    assert isinstance(trainer._get_train_sampler(), ShuffledLengthGroups)  # auto on a CPU: length groups
    assert isinstance(trainer.data_collator, PadCollator) and trainer.data_collator.multiple is None
    assert trainer.model.config.nerflow_decoding == "iob2"
    assert trainer.model.config.id2label == dict(enumerate(job.tokenized.label_names))
    static = nerflow.tasks.train.build_trainer(
        job_for("static", train={"batching": "static"}), "cpu", False, False, False, []
    )
    assert static.data_collator.multiple == 32 and len(static._get_train_sampler()) % 16 == 0


def test_training_keeps_the_best_epoch_and_a_second_call_resumes(job_for):
    job = job_for("best")
    ref = nerflow.tasks.train.train_model(job)
    model_dir = Path(ref.path)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    assert not (model_dir / "training_args.bin").exists()
    assert [e["epoch"] for e in ref.epochs] == [1.0, 2.0]
    assert ref.best_validation_f1 == max(e["val_f1"] for e in ref.epochs) > 0.5
    best_epoch = max(ref.epochs, key=lambda e: e["val_f1"])["epoch"]
    assert ref.best_checkpoint == f"checkpoint-{int(best_epoch) * 10}"  # 160 sentences / 16 = 10 steps per epoch
    assert (ref.batching, ref.compiled, ref.decoding, ref.resumed_from) == ("length", False, "iob2", None)
    log = json.loads((Path(ref.run_dir) / "train_log.json").read_text())
    assert [e["eval_f1"] for e in log if "eval_f1" in e] == [e["val_f1"] for e in ref.epochs]

    again = nerflow.tasks.train.train_model(job)  # the checkpoints are there: nothing is trained twice
    assert again.resumed_from == "checkpoint-20" and again.epochs == ref.epochs


class FakeCompileFailure(RuntimeError):
    """Looks like an error from torch.compile's machinery, as is_compile_error recognises them."""


FakeCompileFailure.__module__ = "torch._dynamo.exc"


def test_a_compile_failure_falls_back_to_eager_with_one_warning(job_for, monkeypatch, caplog):
    from nerflow.tasks.training.trainer import NerTrainer

    train = NerTrainer.train

    def failing_when_compiled(self, *args, **kwargs):
        if self.args.torch_compile:
            raise FakeCompileFailure("inductor could not lower an op")
        return train(self, *args, **kwargs)

    monkeypatch.setattr(NerTrainer, "train", failing_when_compiled)
    with caplog.at_level(logging.WARNING, logger="nerflow.tasks.train"):
        ref = nerflow.tasks.train.train_model(job_for("fallback", train={"epochs": 1}, compute={"compile": "on"}))
    assert ref.compiled is False and Path(ref.path, "model.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "FakeCompileFailure" in warnings[0]


def test_every_training_knob_reaches_the_trainer(job_for):
    knobs = {
        "lr_scheduler": "cosine",
        "optimizer": "adamw_torch",
        "max_grad_norm": 0.5,
        "label_smoothing": 0.1,
        "trainer_args": {"adam_beta2": 0.98, "adam_epsilon": 1e-7, "dataloader_drop_last": True},
    }
    compute = {"gradient_checkpointing": True, "auto_batch_size": True}
    job = job_for("knobs", train=knobs, compute=compute)
    args = nerflow.tasks.train.build_trainer(job, "cpu", False, False, False, []).args
    assert (str(args.lr_scheduler_type.value), str(args.optim.value)) == ("cosine", "adamw_torch")
    assert (
        args.max_grad_norm,
        args.activation_checkpointing,
        args.label_smoothing_factor,
        args.auto_find_batch_size,
    ) == (0.5, True, 0.1, True)
    assert (args.adam_beta2, args.adam_epsilon, args.dataloader_drop_last) == (0.98, 1e-7, True)


@pytest.mark.parametrize(
    "trainer_args, says",
    [
        ({"adam_betta2": 0.98}, "adam_betta2: not a TrainingArguments field of transformers"),
        ({"adam_betta2": 0.98}, "did you mean adam_beta2"),
        ({"adam_beta2": "high"}, "adam_beta2: 'high' is not a valid"),
        ({"learning_rate": 1e-3}, "learning_rate: set by nerflow (use train.learning_rate)"),
        (
            {"save_strategy": "steps"},
            "save_strategy: set by nerflow (nerflow saves a checkpoint every epoch to resume from)",
        ),
        ({"report_to": ["mlflow"]}, "report_to: set by nerflow (use tracking.backends)"),
    ],
)
def test_trainer_args_are_checked_before_the_run_starts(trainer_args, says):
    from nerflow.tasks.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as err:
        load_settings(None, [f"train.trainer_args={json.dumps(trainer_args)}"])
    assert "train.trainer_args" in str(err.value) and says in str(err.value)


def test_early_stopping_stops_a_run_that_cannot_improve_after_patience_plus_one_epochs(job_for):
    ref = nerflow.tasks.train.train_model(
        job_for("stuck", train={"epochs": 5, "learning_rate": 1e-12, "early_stopping_patience": 2})
    )
    assert [e["epoch"] for e in ref.epochs] == [1.0, 2.0, 3.0]
    assert ref.stopped_early.startswith(
        "stopped after epoch 3 of 5: validation F1 did not improve by more than 0.0 for 2 epoch(s)"
    )
    assert ref.epochs[-1]["note"] == ref.stopped_early and ref.best_checkpoint == "checkpoint-10"


def test_early_stopping_lets_a_run_that_keeps_improving_run_to_the_end(job_for):
    ref = nerflow.tasks.train.train_model(
        job_for("improving", train={"epochs": 4, "learning_rate": 1e-3, "early_stopping_patience": 1})
    )
    f1 = [e["val_f1"] for e in ref.epochs]
    assert len(f1) == 4 and f1 == sorted(f1) and len(set(f1)) == 4  # better every epoch
    assert ref.stopped_early is None


def test_every_epoch_logs_its_training_loss_even_when_logging_steps_exceeds_it(job_for):
    """160 sentences in batches of 16 are 10 steps an epoch, fewer than logging_steps: the loss is
    still logged once per epoch, so the epoch table (and the card and the trackers) have it."""
    ref = nerflow.tasks.train.train_model(job_for("few-steps", train={"epochs": 3}, records={"logging_steps": 1000}))
    assert [e["epoch"] for e in ref.epochs] == [1.0, 2.0, 3.0]
    assert all(isinstance(e["train_loss"], float) and e["train_loss"] > 0 for e in ref.epochs)
    log = json.loads((Path(ref.run_dir) / "train_log.json").read_text())
    assert [round(e["epoch"]) for e in log if "loss" in e] == [1, 2, 3]  # one entry each, none twice


class FakeState:
    is_world_process_zero, num_train_epochs, max_steps = True, 3, 30

    def __init__(self, step: int) -> None:
        self.global_step, self.epoch = step, step / 10


def test_the_console_shows_step_epoch_loss_rate_and_time_left():
    import io

    import torch

    from nerflow.tasks.training.trainer import ConsoleProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    lines: list[str] = []

    class Logger:
        def info(self, message):
            lines.append(message)

    piped = ConsoleProgress(lambda: Logger(), every_s=0.0, stream=io.StringIO())  # a worker's log: lines
    piped.trainer = type("T", (), {"last_loss": torch.tensor(0.75)})()
    piped.on_train_begin(None, FakeState(0), None)
    for step in (1, 2, 3):
        piped.on_step_end(None, FakeState(step), None)
    assert len(lines) == 3 and lines[-1].startswith("training: step 3/30 | epoch 0.30/3 | loss 0.7500 | ")
    assert "steps/s" in lines[-1] and "left" in lines[-1]
    screen = Terminal()
    bar = ConsoleProgress(lambda: Logger(), stream=screen)  # a terminal: one line redrawn in place
    bar.on_train_begin(None, FakeState(0), None)
    bar.last_shown = 0.0
    bar.on_step_end(None, FakeState(15), None)
    bar.on_train_end(None, FakeState(30), None)
    assert screen.getvalue().startswith(
        "\r[############............] training: step 15/30"
    ) and screen.getvalue().endswith("\n")
    assert len(lines) == 3  # nothing from the bar went to the log
