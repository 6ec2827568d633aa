"""Two training processes under torchrun with the gloo backend (CPU): DDP through the Trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import prepare, train, train_job, write_synthetic_dataset
from nerflow.tasks.evaluate import evaluate_model
from nerflow.tasks.runtime.files import SEAL
from nerflow.tasks.settings import RunSettings
from nerflow.tasks.training.distributed import launch_distributed
from prefect_db import seeded_home

pytestmark = pytest.mark.slow  # torchrun with two training processes

# Same seed and effective batch (16 = 1 x 16 = 2 x 8); sampling order differs between a random and a
# distributed sampler, so the scores may differ a little: this is the tolerance we hold DDP to.
F1_TOLERANCE = 0.05


def settings_for(tmp_path: Path, tiny_bert: Path, processes: int = 1, **train) -> RunSettings:
    data = write_synthetic_dataset(tmp_path / "synthetic", n_train=192)
    return RunSettings.model_validate(
        {
            "dataset": {"source": str(data)},
            "base_model": {"name": str(tiny_bert)},
            "tokenize": {"max_length": 32},
            "train": {"epochs": 6, "learning_rate": 5e-3, "seed": 7, **train},
            "compute": {"nproc_per_node": processes},
            "output_dir": str(tmp_path / "runs"),
        }
    )


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path, tiny_bert):
    single = settings_for(tmp_path, tiny_bert, batch_size=16)
    ddp = settings_for(tmp_path, tiny_bert, batch_size=8, processes=2)
    _, tokenized = prepare(single)

    one = train(single, tokenized, tmp_path / "runs" / "one")
    lines: list[str] = []
    started = time.perf_counter()
    two = launch_distributed(train_job(ddp, tokenized, tmp_path / "runs" / "two", "two"), lines.append)
    elapsed = time.perf_counter() - started
    print(f"two-process training took {elapsed:.1f} s")

    assert any("--nproc-per-node=2" in line for line in lines)
    assert sum("saved model to" in line for line in lines) == 1  # rank 0 only
    run_two = tmp_path / "runs" / "two"
    assert sorted(p.name for p in run_two.iterdir() if p.name.startswith("model") or ".model" in p.name) == ["model"]
    assert (run_two / "model" / "model.safetensors").is_file() and (run_two / "train_log.json").is_file()
    # 192 sentences / (2 processes x 8) = 12 optimiser steps per epoch, as with 1 x 16.
    assert [p.name for p in sorted((run_two / "checkpoints").glob("checkpoint-*"))][-1] == "checkpoint-72"

    f1_one = evaluate_model(one, tokenized, tmp_path / "runs" / "one").test["f1"]
    f1_two = evaluate_model(two, tokenized, run_two).test["f1"]
    assert f1_one > 0.9 and f1_two > 0.9
    assert abs(f1_one - f1_two) <= F1_TOLERANCE, (f1_one, f1_two)


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds marker (every process of a test run inherits it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ours = proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes().split(b"\0")
            if ours and (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":  # a zombie writes nothing
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def folder_state(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_the_flow_process_killed_alone_takes_torchrun_its_ranks_and_its_server_with_it(tmp_path, tiny_bert):
    """kill -9 of the flow process only, as the kernel's OOM killer does it: torchrun, both ranks and
    the temporary Prefect server die with it, nothing more is written into the run folder, and the
    next attempt gets the folder (its lock) and resumes under DDP from the last sealed checkpoint."""
    import json
    import sys

    s = settings_for(tmp_path, tiny_bert, batch_size=4, epochs=3, processes=2)
    s = s.model_copy(
        update={
            "run_name": "oom-killed",
            "dataset": s.dataset.model_copy(
                update={"source": str(write_synthetic_dataset(tmp_path / "big", n_train=720))}
            ),
        }
    )
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(s.model_dump(mode="json")))
    marker = f"NERFLOW_TEST_RUN={os.urandom(4).hex()}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(seeded_home(tmp_path / "home")),
        marker.split("=")[0]: marker.split("=")[1],
    }
    cmd = [sys.executable, "-m", "nerflow.flows.cli.main", "train", "--config", str(config)]
    flow = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "runs" / "oom-killed"
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob(f"checkpoint-*/{SEAL}")):
        assert flow.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    family = processes_with(marker)
    assert len(family) >= 5, family  # the flow process, its server, the lifeline'd torchrun and two ranks
    os.kill(flow.pid, signal.SIGKILL)  # that process only, not its group or its children
    flow.wait(timeout=30)
    deadline = time.monotonic() + 30
    while processes_with(marker):
        assert time.monotonic() < deadline, f"still running: {processes_with(marker)}"
        time.sleep(0.2)
    settled = folder_state(run_dir)
    time.sleep(3)
    assert folder_state(run_dir) == settled  # no orphan is writing
    assert not (run_dir / "model").exists()
    sealed = [p.parent for p in (run_dir / "checkpoints").glob(f"checkpoint-*/{SEAL}")]
    newest = max(sealed, key=lambda p: int(p.name.split("-")[1]))  # a later, unsealed one is not resumed from

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming training from {newest}" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
    assert (run_dir / "model" / "model.safetensors").is_file()
    log = json.loads((run_dir / "train_log.json").read_text())
    assert [round(e["epoch"]) for e in log if "eval_f1" in e] == [1, 2, 3]
    assert not processes_with(marker)
