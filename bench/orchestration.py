"""What Prefect costs and what its caches save, on the demo flow.

1. cold: `nerflow train` on the demo config with an empty cache and a fresh Prefect home
   (temporary local server started by the run, included in the time);
2. warm: the same command again: tokenization, training and evaluation come from the cache;
3. bare: the same step functions called in order by a plain script, no Prefect.

    python -m bench.orchestration                       # the demo as configured
    python -m bench.orchestration --train-size 500 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, report, run_isolated


def timed_cli(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--train-size", type=int, default=None, help="default: the demo's (2,000)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's (3)")
    parser.add_argument("--json", default="bench/results/orchestration.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}/runs"]
        if args.train_size:
            overrides.append(f"dataset.max_train_samples={args.train_size}")
        if args.epochs:
            overrides.append(f"train.epochs={args.epochs}")
        sets = [x for o in overrides for x in ("--set", o)]
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect-home", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)  # the run starts its own temporary server, as `make demo` does
        cold = timed_cli(["train", "--config", args.config, *sets], env)
        warm = timed_cli(["train", "--config", args.config, *sets], env)
        bare_sets = [x for o in overrides for x in ("--set", o.replace("/runs", "/bare-runs"))]
        bare = run_isolated("bench.bare_pipeline", ["--config", args.config, *bare_sets])["process_wall_s"]

    rows = [
        {"run": "prefect flow, cold (temporary server included)", "wall_s": round(cold, 1)},
        {"run": "prefect flow, warm (cached tokenize/train/evaluate)", "wall_s": round(warm, 1)},
        {"run": "bare script, same steps, no Prefect", "wall_s": round(bare, 1)},
    ]
    summary = {
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "bare_s": round(bare, 1),
        "warm_over_cold": round(warm / cold, 3),
        "prefect_over_bare": round(cold / bare, 3),
        "targets": {"warm_over_cold": "< 0.15", "prefect_over_bare": "<= 1.15"},
    }
    report("Orchestration cost and cache savings (demo flow, CPU)", rows, summary, args.json)


if __name__ == "__main__":
    main()
