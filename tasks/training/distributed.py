"""Training on several processes (GPUs, nodes) through torchrun and PyTorch DDP.

The training task stays the same function: with more than one process it writes the TrainJob to a
file, starts `torchrun ... -m nerflow.tasks.train JOB` in a subprocess, streams its output into the
Prefect run log and reads back the `ModelRef` that rank 0 wrote. torchrun and each rank die with the
flow process (nerflow.tasks.runtime.lifeline), and each rank holds the run folder's training lock while
it lives (nerflow.tasks.runtime.files.hold_training_lock), so no later attempt shares the folder with an
orphan. The Trainer does the distributed work (DistributedSampler, gradient all-reduce, rank-0-only
checkpoints); rank 0 alone writes the model folder and the training log, and W&B logs once (the Trainer
reports from the main process only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nerflow.tasks.refs import ModelRef, TrainJob
from nerflow.tasks.runtime.files import atomic_write_json
from nerflow.tasks.runtime.lifeline import lifeline_command
from nerflow.tasks.settings import ComputeSettings

JOB_FILE = ".distributed-job.json"
RESULT_FILE = ".distributed-result.json"


def processes_per_node(compute: ComputeSettings) -> int:
    if compute.nproc_per_node:
        return compute.nproc_per_node
    import torch

    return max(1, torch.cuda.device_count())


def world_size(compute: ComputeSettings) -> int:
    return processes_per_node(compute) * compute.nnodes


def node_rank() -> str | None:
    return os.environ.get("NODE_RANK") or os.environ.get("JOB_COMPLETION_INDEX")


def torchrun_command(compute: ComputeSettings, run_name: str, job_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes_per_node(compute)}"]
    if compute.nnodes == 1:
        cmd.append("--standalone")  # a private rendezvous on a free local port
    else:
        cmd += [
            f"--nnodes={compute.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={compute.rdzv_endpoint}",
            f"--rdzv-id={compute.rdzv_id or run_name}",
        ]
        if (rank := node_rank()) is not None:
            cmd.append(f"--node-rank={rank}")
    return cmd + ["-m", "nerflow.tasks.train", str(job_file)]


def prefect_api_environment() -> dict[str, str]:
    """The Prefect API this process talks to, for the training processes (rank 0 reports progress):
    without it each would start a Prefect server of its own, one with no credentials."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    # No API: progress updates are skipped rather than served by a server of the rank's own.
    env = {"PREFECT_API_URL": api.url} if api.url else {"PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}
    if api.auth_string:
        env["PREFECT_API_AUTH_STRING"] = api.auth_string.get_secret_value()
    return env


def launch_distributed(job: TrainJob, log_line: Callable[[str], None] = print) -> ModelRef | None:
    """Run train_model under torchrun; return rank 0's ModelRef (None on the other nodes)."""
    run_dir = Path(job.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # progress_artifact_id travels along: rank 0 updates the artifact through the Prefect API.
    job_file = atomic_write_json(
        run_dir / JOB_FILE, job.model_copy(update={"run_dir": str(run_dir)}).model_dump(mode="json")
    )
    result_file = run_dir / RESULT_FILE
    result_file.unlink(missing_ok=True)
    cmd = torchrun_command(job.compute, job.run_name, job_file)
    log_line("launching: " + " ".join(cmd[1:]))
    env = {**os.environ, **prefect_api_environment()}
    # torchrun, and through it every rank, dies with this process however it dies (nerflow.tasks.runtime.lifeline): a
    # flow process killed by the OOM killer leaves no orphan writing into the run folder.
    proc = subprocess.Popen(
        lifeline_command(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log_line(line.rstrip())
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"distributed training failed: torchrun exited with code {code}")
    if node_rank() not in (None, "0"):
        return None  # only the first node holds rank 0's result
    return ModelRef.model_validate_json(result_file.read_text(encoding="utf-8"))
