"""Training and tokenization speed, and peak memory: the tutorial's Trainer settings against nerflow's.

Both variants fine-tune the packaged MiniLM on the same WikiANN-en sentences for the same epochs with
an evaluation per epoch; each runs in its own process so its peak memory is its own.

    python -m bench.speed                       # 2,000 train sentences, 1 epoch, 500 validation
    python -m bench.speed --train-size 5000 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import LABELS, MINILM, data_dir, peak_rss_mib, report, run_isolated, subset


def train_tutorial(folder: Path, epochs: int, out: Path) -> dict:
    from bench.tutorial_recipe import fine_tune

    return fine_tune(folder, out, epochs, learning_rate=2e-5)


def train_nerflow(folder: Path, epochs: int, out: Path) -> dict:
    from bench.common import nerflow_steps
    from nerflow.flows.pipeline import Outputs, train_job
    from nerflow.tasks.refs import RunContext, TrackingRef
    from nerflow.tasks.settings import RunSettings
    from nerflow.tasks.train import train_model

    # nerflow's defaults with the tutorial's hyperparameters; only the engineering differs.
    s = RunSettings.model_validate(
        {
            "dataset": {"source": str(folder)},
            "base_model": {"name": MINILM},
            "train": {"epochs": epochs, "learning_rate": 2e-5, "batch_size": 16},
            "output_dir": str(out),
        }
    )
    dataset, tokenized, _, _ = nerflow_steps(s, out / "run", train=False)
    started = time.perf_counter()
    ctx = RunContext.for_run(s, "bench", out / "run")
    train_model(train_job(s, Outputs(tracking=TrackingRef(), tokenized=tokenized), ctx))
    return {"train_wall_s": time.perf_counter() - started, "sentences": dataset.num_rows["train"]}


def tokenization_rates(folder: Path, repeats: int = 5) -> dict[str, float]:
    """Sentences per second of tokenization + label alignment, same tokenizer and batches of 1,000."""
    import json

    from bench.tutorial_recipe import tokenize_and_align_labels
    from nerflow.tasks.data.alignment import b_to_i_map
    from nerflow.tasks.settings import BaseModelSettings
    from nerflow.tasks.tokenize import encode_batch
    from nerflow.tasks.training.pretrained import load_tokenizer

    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens = [r["tokens"] for r in rows]
    tags = [r["ner_tags"] for r in rows]
    tokenizer = load_tokenizer(BaseModelSettings(name=MINILM))
    b_to_i = b_to_i_map(LABELS)
    batches = [(tokens[i : i + 1000], tags[i : i + 1000]) for i in range(0, len(tokens), 1000)]

    def nerflow() -> None:
        for t, g in batches:
            encode_batch(tokenizer, t, g, "first", b_to_i, 512)

    def tutorial() -> None:
        for t, g in batches:
            tokenize_and_align_labels({"tokens": t, "ner_tags": g}, tokenizer)

    # Interleaved repetitions, best of each: the machine is shared and noisy.
    best = {"tutorial": float("inf"), "nerflow": float("inf")}
    for _ in range(repeats):
        for name, fn in (("tutorial", tutorial), ("nerflow", nerflow)):
            best[name] = min(best[name], _timed(fn))
    return {name: len(tokens) / seconds for name, seconds in best.items()}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def variant_main(args) -> None:
    import json

    out = Path(tempfile.mkdtemp(prefix=f"nerflow-speed-{args.variant}-"))
    fn = train_tutorial if args.variant == "tutorial" else train_nerflow
    result = fn(Path(args.folder), args.epochs, out)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(args.json_out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", default="bench/results/speed.json", help="where to write the JSON results")
    parser.add_argument("--variant", choices=["tutorial", "nerflow"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return variant_main(args)

    with tempfile.TemporaryDirectory() as tmp:
        src = data_dir(args.data)
        folder = subset(
            src, Path(tmp) / "data", {"train": args.train_size, "validation": args.val_size, "test": args.val_size}
        )
        rates = tokenization_rates(subset(src, Path(tmp) / "full", {"train": None, "validation": 10, "test": 10}))
        common = ["--folder", str(folder), "--epochs", str(args.epochs)]
        results = {v: run_isolated("bench.speed", ["--variant", v, *common]) for v in ("tutorial", "nerflow")}
    rows = []
    for name, r in results.items():
        samples = r["sentences"] * args.epochs
        rows.append(
            {
                "variant": name,
                "train_wall_s": round(r["train_wall_s"], 1),
                "samples_per_s": round(samples / r["train_wall_s"], 1),
                "peak_rss_mib": round(r["peak_rss_mib"]),
                "tokenize_sent_per_s": round(rates[name]),
            }
        )
    tut, ner = rows
    summary = {
        "train_size": args.train_size,
        "epochs": args.epochs,
        "train_throughput_ratio": round(ner["samples_per_s"] / tut["samples_per_s"], 3),
        "tokenize_throughput_ratio": round(ner["tokenize_sent_per_s"] / tut["tokenize_sent_per_s"], 3),
        "nerflow_peak_rss_gib": round(ner["peak_rss_mib"] / 1024, 3),
        "tutorial_peak_rss_gib": round(tut["peak_rss_mib"] / 1024, 3),
        "targets": {
            "train_throughput_ratio": ">= 1.3",
            "nerflow_peak_rss_gib": "< 1.5",
            "tokenize_throughput_ratio": ">= 1.0",
        },
    }
    report(
        "Training speed and memory: tutorial Trainer settings vs nerflow defaults (MiniLM, CPU)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
