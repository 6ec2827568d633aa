"""Word-level quality: nerflow's alignment against the tutorial's, and what the tutorial's score hides.

Both models are the packaged MiniLM fine-tuned the same way on the same WikiANN-en sentences; only
the label alignment differs: `first` (nerflow's default) or `tutorial` (B- copied to every subword).
Each is scored at word level on the full test split; the tutorial's model is also scored its own way
(per subword), so the gap between what the tutorial reports and what it achieves is visible.

    python -m bench.quality                               # 5,000 train sentences, 3 epochs, 10,000 test
    python -m bench.quality --train-size 1000 --epochs 1 --test-size 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import MINILM, data_dir, report, subset


def run_variant(folder: Path, out: Path, alignment: str, epochs: int, lr: float) -> dict:
    from flows.settings import RunSettings
    from tasks.evaluate import evaluate_model
    from tasks.ingest import ingest_dataset
    from tasks.tokenize import tokenize_dataset
    from tasks.train import train_model

    s = RunSettings.model_validate(
        {
            "dataset": {"source": str(folder)},
            "model": {"checkpoint": MINILM},
            "tokenize": {"alignment": alignment, "max_length": 128},
            "train": {"epochs": epochs, "learning_rate": lr, "batch_size": 16},
            "output_dir": str(out),
        }
    )
    dataset = ingest_dataset(s.dataset, s.resolved_cache_dir())
    tokenized = tokenize_dataset(dataset, s.model, s.tokenize, s.resolved_cache_dir())
    started = time.perf_counter()
    model = train_model(tokenized, s.model, s.train, s.tracking, out / alignment, alignment)
    train_s = time.perf_counter() - started
    ev = evaluate_model(model, tokenized, out / alignment)
    return {"test": ev.test, "subword_f1": ev.subword_level_tutorial_f1["test"], "train_s": train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=None, help="default: the full test split")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", default="bench/results/quality.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(
            data_dir(args.data), Path(tmp) / "data", {"train": args.train_size, "validation": args.val_size, "test": args.test_size}
        )
        results = {a: run_variant(folder, Path(tmp) / "runs", a, args.epochs, args.lr) for a in ("first", "tutorial")}

    rows = []
    for alignment, r in results.items():
        t = r["test"]
        rows.append(
            {
                "model": "nerflow (first)" if alignment == "first" else "tutorial (B- copied)",
                "word_f1": round(t["f1"], 4),
                "word_precision": round(t["precision"], 4),
                "word_recall": round(t["recall"], 4),
                **{f"f1_{e}": round(v["f1"], 4) for e, v in sorted(t["per_entity"].items())},
                "subword_f1 (tutorial's score)": round(r["subword_f1"], 4),
                "train_s": round(r["train_s"], 1),
                "test_sentences": t["sentences"],
            }
        )
    first, tutorial = results["first"], results["tutorial"]
    summary = {
        "train_size": args.train_size,
        "epochs": args.epochs,
        "test_sentences": first["test"]["sentences"],
        "nerflow_word_f1": round(first["test"]["f1"], 4),
        "tutorial_reported_subword_f1": round(tutorial["subword_f1"], 4),
        "tutorial_actual_word_f1": round(tutorial["test"]["f1"], 4),
        "tutorial_report_gap": round(tutorial["subword_f1"] - tutorial["test"]["f1"], 4),
        "nerflow_minus_tutorial_word_f1": round(first["test"]["f1"] - tutorial["test"]["f1"], 4),
    }
    report("Word-level test quality (MiniLM, WikiANN-en)", rows, summary, args.json)


if __name__ == "__main__":
    main()
