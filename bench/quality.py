"""Word-level quality of nerflow's defaults against the plain recipe, in several data regimes.

Variants, all fine-tuning the packaged MiniLM with the same epochs, learning rate, batch size, weight
decay and seed on the same sentences (bench.regimes builds the data from WikiANN-en):

- `plain`: a plain Trainer script as transformers' run_ner.py writes it, with 10% warm-up:
  first-subword labels, random batches, the model after the last epoch, argmax tags per word;
- `nerflow`: nerflow's defaults (only the shared hyperparameters set): on a CPU, length-grouped
  batches in shuffled order, 10% warm-up, best epoch by validation F1, IOB2-constrained decoding;
- `static`: nerflow with `train.batching=static`, the GPU path's random batches padded to fixed
  bucket lengths (run here on the CPU, without compilation: the question is quality, not speed);
- `grouped`: nerflow before this benchmark existed (transformers' length-grouped sampler, no
  warm-up, argmax), for reference; not run unless asked for.

Every model is scored by the same word-level scorer on the same test split. nerflow's rows also show
the argmax score of the same model, so decoding and training can be told apart. Time per epoch
includes each recipe's own evaluation of the validation split after the epoch.

    python -m bench.quality                                   # every regime, seeds 1 2 (20k: seed 1)
    python -m bench.quality --regimes short 2k --seeds 1 2 3 --variants plain nerflow
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import MINILM, data_dir, report
from bench.regimes import REGIMES, build_regime, describe

VARIANTS = ("plain", "nerflow", "static", "grouped")
# Below this many training sentences, seed noise matters: those regimes get every seed.
ONE_SEED_FROM = 20000


def nerflow_settings(folder: Path, out: Path, args, seed: int, variant: str):
    from nerflow.tasks.settings import RunSettings

    train = {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": 16, "seed": seed}
    evaluation = {}
    if variant == "static":
        train["batching"] = "static"
    if variant == "grouped":
        train.update(batching="length", warmup_ratio=0.0)
        evaluation["decoding"] = "argmax"
    return RunSettings.model_validate(
        {
            "dataset": {"source": str(folder)},
            "base_model": {"name": MINILM},
            "train": train,
            "evaluation": evaluation,
            "output_dir": str(out),
        }
    )


def run_nerflow(folder: Path, out: Path, args, seed: int, variant: str) -> dict:
    from bench.common import nerflow_steps

    settings = nerflow_settings(folder, out, args, seed, variant)
    started = time.perf_counter()
    with transformers_length_grouping() if variant == "grouped" else contextlib.nullcontext():
        dataset, _, model, evaluation = nerflow_steps(settings, out / f"{variant}-{seed}")
    return {
        "test_f1": evaluation.test["f1"],
        "test_f1_argmax": evaluation.word_level_argmax["test"]["f1"],
        "val_f1": [round(e["val_f1"], 4) for e in model.epochs],
        # As the plain recipe's: the Trainer's own train() time (per-epoch validation included).
        "s_per_epoch": dataset.num_rows["train"] / model.train_samples_per_second,
        "wall_s": time.perf_counter() - started,
    }


@contextlib.contextmanager
def transformers_length_grouping():
    """The sampler nerflow took before: transformers' group_by_length (longest to shortest per mega-batch)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    import nerflow.tasks.training.trainer

    original = nerflow.tasks.training.trainer.train_sampler
    nerflow.tasks.training.trainer.train_sampler = lambda batching, lengths, batch_size, seed: LengthGroupedSampler(
        batch_size, lengths=list(lengths)
    )
    try:
        yield
    finally:
        nerflow.tasks.training.trainer.train_sampler = original


def run_plain(folder: Path, out: Path, args, seed: int) -> dict:
    from bench.common import nerflow_steps
    from bench.tutorial_recipe import fine_tune
    from nerflow.tasks.evaluate import predict_splits, split_scores

    started = time.perf_counter()
    plain = fine_tune(folder, out / f"plain-{seed}", args.epochs, args.lr, seed=seed, plain=True)
    # Scored like every other variant: nerflow's word-level scorer on the same tokenized test split.
    _, tokenized, _, _ = nerflow_steps(nerflow_settings(folder, out, args, seed, "nerflow"), out, train=False)
    data = tokenized.load()
    predictions = predict_splits(plain["model_dir"], data, 64, tokenized.label_names)["test"]
    scores, _, _, _ = split_scores(predictions, data["test"], tokenized.label_names, "argmax")
    return {
        "test_f1": scores["f1"],
        "test_f1_argmax": scores["f1"],
        "val_f1": plain["val_f1"],
        "s_per_epoch": plain["train_wall_s"] / args.epochs,
        "wall_s": time.perf_counter() - started,
    }


def run_regime(name: str, args, root: Path) -> list[dict]:
    folder = build_regime(name, data_dir(args.data), root / "data" / name)
    shape = describe(folder)
    seeds = args.seeds[:1] if shape["train_sentences"] >= ONE_SEED_FROM else args.seeds
    rows = []
    for seed in seeds:
        for variant in args.variants:  # interleaved per seed: a drift in machine load hits every variant
            out = root / "runs" / name
            result = (
                run_plain(folder, out, args, seed)
                if variant == "plain"
                else run_nerflow(folder, out, args, seed, variant)
            )
            rows.append(
                {
                    "regime": name,
                    "train": shape["train_sentences"],
                    "short_share": shape["train_short_share"],
                    "variant": variant,
                    "seed": seed,
                    "test_f1": round(result["test_f1"], 4),
                    "test_f1_argmax": round(result["test_f1_argmax"], 4),
                    "val_f1_by_epoch": "/".join(f"{f:.3f}" for f in result["val_f1"]),
                    "s_per_epoch": round(result["s_per_epoch"], 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict], variants: list[str]) -> dict:
    """Per regime: mean test F1 of each variant over seeds, its spread, and nerflow minus plain."""
    out: dict = {"regimes": {}}
    deltas = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        per = {}
        for v in variants:
            f1s = [r["test_f1"] for r in rows if r["regime"] == regime and r["variant"] == v]
            secs = [r["s_per_epoch"] for r in rows if r["regime"] == regime and r["variant"] == v]
            if f1s:
                per[v] = {
                    "mean_f1": round(statistics.mean(f1s), 4),
                    "seed_spread": round(max(f1s) - min(f1s), 4),
                    "s_per_epoch": round(statistics.mean(secs), 1),
                }
        if "plain" in per:
            for v in per:
                if v != "plain":
                    per[v]["minus_plain"] = round(per[v]["mean_f1"] - per["plain"]["mean_f1"], 4)
            if "nerflow" in per:
                deltas.append(per["nerflow"]["minus_plain"])
        out["regimes"][regime] = per
    if deltas:
        out["nerflow_minus_plain_mean"] = round(statistics.mean(deltas), 4)
        out["nerflow_minus_plain_min"] = round(min(deltas), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=["2k", "5k", "short", "long", "20k"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain", "nerflow", "static"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", default="bench/results/quality.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.regimes for row in run_regime(name, args, Path(tmp))]
    summary = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": 16,
        "seeds": args.seeds,
        **summarise(rows, args.variants),
    }
    summary["targets"] = {"nerflow_minus_plain_min": ">= -noise (seed spread)", "nerflow_minus_plain_mean": ">= 0.01"}
    report(
        "Word-level test F1: nerflow defaults vs the plain run_ner.py recipe (MiniLM, WikiANN-en regimes)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
