"""What Prefect costs and what its caches save, on the demo flow.

0. once: a new Prefect home's database is created (`prefect server database upgrade`, Prefect's
   migrations; reported on its own: every later run on that home skips it);
1. cold: `nerflow train` on the demo config with empty caches (the temporary local server started by
   the run is included in the time);
2. warm: the same command again: tokenization, training and evaluation come from the cache;
3. bare: the same step functions called in order by a plain script, no Prefect.

    python -m bench.orchestration                       # the demo as configured
    python -m bench.orchestration --train-size 500 --epochs 1
    python -m bench.orchestration --repeats 2           # bare first in round 2; medians reported
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, report, run_isolated


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    return time.perf_counter() - started


def timed_cli(args: list[str], env: dict[str, str]) -> float:
    return timed([sys.executable, "-m", "nerflow.flows.cli.main", *args], env)


def training_seconds(runs_dir: Path) -> float:
    """The Trainer's own runtime in the run that trained (the only run so far), from its train_log.json."""
    log = next(runs_dir.glob("*/train_log.json"))
    return float(json.loads(log.read_text(encoding="utf-8"))[-1]["train_runtime"])


def one_round(config: str, overrides: list[str], bare_first: bool) -> dict[str, float]:
    """Cold, warm and bare on fresh caches; `bare_first` swaps the order so a drift in machine load
    does not always favour the same side."""
    with tempfile.TemporaryDirectory() as tmp:
        sets = [x for o in [f"output_dir={tmp}/runs", *overrides] for x in ("--set", o)]
        bare_sets = [x for o in [f"output_dir={tmp}/bare-runs", *overrides] for x in ("--set", o)]
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect-home", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)  # the run starts its own temporary server, as `make demo` does

        def bare() -> dict:
            return run_isolated("bench.bare_pipeline", ["--config", config, *bare_sets])

        bare_run = bare() if bare_first else None
        create_db = timed([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env)
        cold = timed_cli(["train", "--config", config, *sets], env)
        cold_train = training_seconds(Path(tmp) / "runs")
        warm = timed_cli(["train", "--config", config, *sets], env)
        if bare_run is None:
            bare_run = bare()
    return {
        "create_db_s": create_db,
        "cold_s": cold,
        "warm_s": warm,
        "bare_s": bare_run["process_wall_s"],
        "cold_train_s": cold_train,
        "bare_train_s": bare_run["train_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--train-size", type=int, default=None, help="default: the demo's (2,000)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's (3)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds, alternating which side runs first; medians reported"
    )
    parser.add_argument("--json", default="bench/results/orchestration.json")
    args = parser.parse_args()

    overrides = []
    if args.train_size:
        overrides.append(f"dataset.max_train_samples={args.train_size}")
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    rounds = [one_round(args.config, overrides, bare_first=i % 2 == 1) for i in range(args.repeats)]

    rows = []
    for i, r in enumerate(rounds, start=1):
        rows += [
            {
                "round": i,
                "run": "once per PREFECT_HOME: create the Prefect database",
                "wall_s": round(r["create_db_s"], 1),
                "training_s": 0.0,
            },
            {
                "round": i,
                "run": "prefect flow, cold (temporary server included)",
                "wall_s": round(r["cold_s"], 1),
                "training_s": round(r["cold_train_s"], 1),
            },
            {
                "round": i,
                "run": "prefect flow, warm (cached tokenize/train/evaluate)",
                "wall_s": round(r["warm_s"], 1),
                "training_s": 0.0,
            },
            {
                "round": i,
                "run": "bare script, same steps, no Prefect",
                "wall_s": round(r["bare_s"], 1),
                "training_s": round(r["bare_train_s"], 1),
            },
        ]
    warm_over_cold = [r["warm_s"] / r["cold_s"] for r in rounds]
    prefect_over_bare = [r["cold_s"] / r["bare_s"] for r in rounds]
    summary = {
        "rounds": len(rounds),
        "cold_s": round(statistics.median(r["cold_s"] for r in rounds), 1),
        "warm_s": round(statistics.median(r["warm_s"] for r in rounds), 1),
        "bare_s": round(statistics.median(r["bare_s"] for r in rounds), 1),
        "warm_over_cold": round(statistics.median(warm_over_cold), 3),
        "prefect_over_bare": round(statistics.median(prefect_over_bare), 3),
        "prefect_over_bare_per_round": [round(x, 3) for x in prefect_over_bare],
        # A first run on a new PREFECT_HOME also creates the server's database (migrations), once.
        "create_db_s": round(statistics.median(r["create_db_s"] for r in rounds), 1),
        "prefect_over_bare_with_db_creation": round(
            statistics.median((r["create_db_s"] + r["cold_s"]) / r["bare_s"] for r in rounds), 3
        ),
        # Wall time outside the Trainer's own runtime: what orchestration adds, apart from the noise
        # in training speed on a shared machine.
        "cold_outside_training_s": round(statistics.median(r["cold_s"] - r["cold_train_s"] for r in rounds), 1),
        "bare_outside_training_s": round(statistics.median(r["bare_s"] - r["bare_train_s"] for r in rounds), 1),
        "training_prefect_over_bare": round(
            statistics.median(r["cold_train_s"] / r["bare_train_s"] for r in rounds), 3
        ),
        # The flow's time with its training replaced by the bare script's (same work, same seed): the
        # ratio without the run-to-run noise of training speed on a shared machine.
        "prefect_over_bare_same_training": round(
            statistics.median((r["cold_s"] - r["cold_train_s"] + r["bare_train_s"]) / r["bare_s"] for r in rounds), 3
        ),
        "targets": {"warm_over_cold": "< 0.15", "prefect_over_bare": "<= 1.15"},
    }
    report("Orchestration cost and cache savings (demo flow, CPU)", rows, summary, args.json)


if __name__ == "__main__":
    main()
