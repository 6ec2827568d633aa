"""Batch prediction speed: nerflow's NerPredictor against the transformers pipeline, on real sentences.

Variants, all on the same model and the same WikiANN-en test sentences (joined into plain text):

- `pipeline, one call per sentence`: `pipeline("token-classification", aggregation_strategy="first")`
  called once per sentence, as the tutorial's inference example and most serving code do;
- `pipeline, batched`: the same pipeline given the whole list with `batch_size`;
- `nerflow`: `NerPredictor.predict` (length-sorted batches, word windows, IOB2 decoding where the model
  was trained with it).

Each variant runs `--rounds` times, alternating, after one warm-up call; the best round counts (the
machine is shared: the fastest round is the one least disturbed). Each variant's entities are also
scored against the sentences' gold tags (seqeval, entity level, over the words of the test split), so
a faster variant cannot hide a worse answer: the pipeline's `first` aggregation starts a new entity
at every change of type, nerflow decodes valid IOB2 sequences.

Without `--model`, the packaged MiniLM is first fine-tuned for one epoch on 2,000 training sentences
(the speed does not depend on how well it tags, but the number of entities it finds does).

    python -m bench.predict                         # 1,000 test sentences, 2 rounds
    python -m bench.predict --model runs/<run>/model --sentences 2000   # e.g. the model of `make demo`
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from bench.common import LABELS, MINILM, data_dir, report, subset


def fine_tuned_minilm(folder: Path, out: Path) -> str:
    from bench.common import nerflow_steps
    from nerflow.tasks.settings import RunSettings

    s = RunSettings.model_validate(
        {
            "dataset": {"source": str(folder)},
            "base_model": {"name": MINILM},
            "train": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 16},
            "output_dir": str(out),
        }
    )
    _, _, model, _ = nerflow_steps(s, out / "run")
    return model.path


def gold_sentences(folder: Path, n: int) -> tuple[list[str], list[list[str]], list[list[tuple[int, int]]]]:
    """The first n test sentences: text (words joined by spaces), gold tags, each word's character span."""
    labels = (
        (folder / "labels.txt").read_text(encoding="utf-8").split() if (folder / "labels.txt").is_file() else LABELS
    )
    texts, gold, spans = [], [], []
    with (folder / "test.jsonl").open(encoding="utf-8") as fh:
        for _, line in zip(range(n), fh):
            row = json.loads(line)
            texts.append(" ".join(row["tokens"]))
            gold.append([t if isinstance(t, str) else labels[t] for t in row["ner_tags"]])
            starts = list(itertools.accumulate((len(w) + 1 for w in row["tokens"]), initial=0))
            spans.append([(a, a + len(w)) for a, w in zip(starts, row["tokens"])])
    return texts, gold, spans


def f1_against_gold(entities: list[list[dict]], gold: list[list[str]], spans: list[list[tuple[int, int]]]) -> float:
    from seqeval.metrics import f1_score

    predicted = []
    for found, words in zip(entities, spans):
        tags = ["O"] * len(words)
        for e in found:
            inside = [i for i, (a, b) in enumerate(words) if a >= e["start"] and b <= e["end"]]
            kind = e.get("entity_group", e.get("entity"))
            for k, i in enumerate(inside):
                tags[i] = ("B-" if k == 0 else "I-") + kind
        predicted.append(tags)
    return f1_score(gold, predicted)


def variants(model_dir: str, batch_size: int) -> dict:
    from transformers import pipeline

    from nerflow.tasks.prediction.tagger import NerPredictor

    tagger = pipeline("token-classification", model=model_dir, aggregation_strategy="first", device=-1)
    predictor = NerPredictor(model_dir, batch_size=batch_size)
    return {
        "pipeline, one call per sentence": lambda texts: [tagger(t) for t in texts],
        "pipeline, batched": lambda texts: tagger(texts, batch_size=batch_size),
        "nerflow": predictor.predict,
    }


def measure(model_dir: str, sentences: tuple, rounds: int, batch_size: int) -> tuple[list[dict], dict]:
    texts, gold, spans = sentences
    runners = variants(model_dir, batch_size)
    best: dict[str, float] = {}
    outputs: dict[str, list] = {}
    for run in runners.values():
        run(texts[:8])  # warm-up: first-call allocations and lazy imports
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            outputs[name] = run(texts)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    baseline = best["pipeline, one call per sentence"]
    rows = [
        {
            "variant": name,
            "best_s": round(seconds, 2),
            "sentences_per_s": round(len(texts) / seconds, 1),
            "speedup_vs_one_per_call": round(baseline / seconds, 2),
            "entities": sum(len(e) for e in outputs[name]),
            "f1_vs_gold": round(f1_against_gold(outputs[name], gold, spans), 4),
        }
        for name, seconds in best.items()
    ]
    f1s = {row["variant"]: row["f1_vs_gold"] for row in rows}
    summary = {
        "sentences": len(texts),
        "rounds": rounds,
        "batch_size": batch_size,
        "nerflow_vs_one_per_call": round(baseline / best["nerflow"], 2),
        "nerflow_vs_batched_pipeline": round(best["pipeline, batched"] / best["nerflow"], 2),
        "nerflow_f1_vs_gold": f1s["nerflow"],
        "pipeline_f1_vs_gold": f1s["pipeline, batched"],
        "target": {"nerflow_vs_one_per_call": ">= 5"},
    }
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--model", help="a trained model folder (RUN_DIR/model); default: MiniLM fine-tuned here")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default="bench/results/predict.json")
    args = parser.parse_args()

    folder = data_dir(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            small = subset(folder, Path(tmp) / "data", {"train": 2000, "validation": 500, "test": 500})
            model_dir = fine_tuned_minilm(small, Path(tmp) / "runs")
        rows, summary = measure(model_dir, gold_sentences(folder, args.sentences), args.rounds, args.batch_size)
    report(
        f"Batch prediction, {args.sentences} WikiANN-en test sentences (CPU threads as torch sets them)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
