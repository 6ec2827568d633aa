"""The GPU benchmark script must run anywhere with --smoke and end with its JSON summary line
(it measures nothing here: speed is measured by bench/, not by tests)."""

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--smoke", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["smoke"] is True and summary["tokens_per_s_ratio"] > 0
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == ["tutorial", "nerflow"]
