"""The same sentences in each tagging scheme: do they train to the same model?

The first N WikiANN-en sentences of each split are written in IOB2, IOB1 (CoNLL-2003 as released),
BIOES, BILOU and IO, each fine-tunes the packaged MiniLM with the same recipe and seed, and each model
is scored at word level on its test split. `iob1-as-iob2` is what nerflow did before it read schemes:
IOB1 data taken for IOB2 (dataset.tag_scheme=iob2), its I- span starts kept as tags the IOB2-valid
decoder may not produce at a span start.

    python -m bench.schemes --train-size 600 --eval-size 200 --epochs 3 --json bench/results/schemes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import LABELS, MINILM, data_dir, nerflow_steps, report

VARIANTS = {  # name: (scheme the files are written in, dataset.tag_scheme)
    "iob2": ("iob2", "auto"),
    "iob1": ("iob1", "auto"),
    "iob1-as-iob2": ("iob1", "iob2"),
    "bioes": ("bioes", "auto"),
    "bilou": ("bilou", "auto"),
    "io": ("io", "auto"),
}


def write_in_scheme(src: Path, dest: Path, scheme: str, sizes: dict[str, int]) -> Path:
    from nerflow.tasks.data.schemes import convert

    dest.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        with (
            (src / f"{split}.jsonl").open(encoding="utf-8") as fh,
            (dest / f"{split}.jsonl").open("w", encoding="utf-8") as out,
        ):
            for _, line in zip(range(n), fh):
                row = json.loads(line)
                tags = convert([LABELS[t] for t in row["ner_tags"]], "iob2", scheme)
                out.write(json.dumps({"tokens": row["tokens"], "ner_tags": tags}, ensure_ascii=False) + "\n")
    return dest


def run_variant(name: str, src: Path, work: Path, args, seed: int) -> dict:
    from nerflow.tasks.settings import RunSettings

    scheme, declared = VARIANTS[name]
    folder = write_in_scheme(
        src,
        work / name / "data",
        scheme,
        {"train": args.train_size, "validation": args.eval_size, "test": args.eval_size},
    )
    settings = RunSettings.model_validate({
        "dataset": {"source": str(folder), "tag_scheme": declared},
        "base_model": {"name": MINILM},
        "train": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": 16, "seed": seed},
        "output_dir": str(work / name / "runs"),
    })  # fmt: skip
    started = time.perf_counter()
    dataset, _, _, evaluation = nerflow_steps(settings, work / name / "runs" / f"seed{seed}")
    test = evaluation.test
    return {
        "variant": name, "seed": seed, "read_as": dataset.tag_scheme, "test_f1": round(test["f1"], 4),
        "test_precision": round(test["precision"], 4), "test_recall": round(test["recall"], 4),
        "LOC_recall": round(test["per_entity"].get("LOC", {}).get("recall", 0.0), 4), "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--train-size", type=int, default=600)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="write rows and summary here")
    args = parser.parse_args()
    src = data_dir(args.data)
    with tempfile.TemporaryDirectory(prefix="bench-schemes-") as tmp:
        rows = [run_variant(name, src, Path(tmp), args, seed) for seed in args.seeds for name in args.variants]
    f1 = {(r["variant"], r["seed"]): r["test_f1"] for r in rows}
    gaps = {
        name: round(max(abs(f1[(name, s)] - f1[("iob2", s)]) for s in args.seeds), 4)
        for name in args.variants
        if name != "iob2" and "iob2" in args.variants
    }
    summary = {
        "train_sentences": args.train_size,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "largest_f1_gap_to_iob2": gaps,
    }
    report(
        f"Tagging schemes: {args.train_size} training sentences, MiniLM, {args.epochs} epochs", rows, summary, args.json
    )


if __name__ == "__main__":
    main()
