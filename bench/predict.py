"""Batch prediction speed: nerflow's NerPredictor against the transformers pipeline, on real sentences.

Variants, all on the same model and the same WikiANN-en test sentences (joined into plain text):

- `pipeline, one call per sentence`: `pipeline("token-classification", aggregation_strategy="first")`
  called once per sentence, as the tutorial's inference example and most serving code do;
- `pipeline, batched`: the same pipeline given the whole list with `batch_size`;
- `nerflow`: `NerPredictor.predict` (length-sorted batches, word windows, IOB2 decoding where the model
  was trained with it), with the torch model;
- `nerflow, onnx fp32` and `nerflow, onnx int8`: the same with the model exported to ONNX (torch.export)
  and its dynamic int8 quantisation, run by onnxruntime.

A second table puts `nerflow predict`'s end-to-end path (`predict_file`: read the text file, split and
tokenize, windows, forward, decode, write JSON lines; the model loaded beforehand) beside a bare forward
pass over the same length-sorted batches with the same backend, per backend.

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


def onnx_files(model_dir: str, folder: Path) -> dict[str, Path]:
    """The model exported to ONNX fp32 and quantised to int8 (nerflow's export functions) in `folder`."""
    from nerflow.tasks.exporting.onnx import export_fp32, quantize_int8

    files = {"fp32": folder / "model.onnx", "int8": folder / "model_quantized.onnx"}
    export_fp32(model_dir, files["fp32"], opset=18)
    quantize_int8(files["fp32"], files["int8"])
    return files


def predictors(model_dir: str, batch_size: int, onnx: dict[str, Path]) -> dict:
    from nerflow.tasks.prediction.tagger import NerPredictor

    return {
        "nerflow": NerPredictor(model_dir, batch_size=batch_size, backend="torch"),
        **{f"nerflow, onnx {k}": NerPredictor(model_dir, batch_size=batch_size, onnx_file=f) for k, f in onnx.items()},
    }


def variants(model_dir: str, batch_size: int, nerflow: dict) -> dict:
    from transformers import pipeline

    tagger = pipeline("token-classification", model=model_dir, aggregation_strategy="first", device=-1)
    return {
        "pipeline, one call per sentence": lambda texts: [tagger(t) for t in texts],
        "pipeline, batched": lambda texts: tagger(texts, batch_size=batch_size),
        **{name: predictor.predict for name, predictor in nerflow.items()},
    }


def bare_forward_s(predictor, texts: list[str], rounds: int) -> float:
    """Best time of the network alone over the batches nerflow makes of these texts (same order, padding)."""
    import torch

    from nerflow.tasks.prediction.tagger import Document
    from nerflow.tasks.training.batching import PadCollator, length_sorted_batches

    windows, _ = predictor._windows([Document.from_text(t) for t in texts])
    ids = predictor.tokenizer(windows, is_split_into_words=True, truncation=True, max_length=predictor.max_length)[
        "input_ids"
    ]
    collate = PadCollator(predictor.tokenizer.pad_token_id or 0)
    batches = [
        collate([{"input_ids": ids[i]} for i in b])
        for b in length_sorted_batches([len(x) for x in ids], predictor.batch_size)
    ]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                predictor.network(**batch)
        best = min(best, time.perf_counter() - started)
    return best


def end_to_end(model_dir: str, nerflow: dict, texts: list[str], rounds: int, folder: Path) -> list[dict]:
    """predict_file (read, tokenize, windows, forward, decode, write) against the bare forward pass."""
    from nerflow.tasks.prediction.files import predict_file

    source = folder / "documents.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    rows = []
    for name, predictor in nerflow.items():
        bare = bare_forward_s(predictor, texts, rounds)
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            predict_file(model_dir, source, folder / "out.jsonl", batch_size=predictor.batch_size, predictor=predictor)
            best = min(best, time.perf_counter() - started)
        rows.append(
            {
                "path": name,
                "bare_forward_s": round(bare, 3),
                "end_to_end_s": round(best, 3),
                "end_to_end_sentences_per_s": round(len(texts) / best, 1),
                "end_to_end_vs_bare_forward": round(bare / best, 3),
            }
        )
    return rows


def measure(model_dir: str, sentences: tuple, rounds: int, batch_size: int, work: Path) -> tuple[list[dict], dict]:
    texts, gold, spans = sentences
    nerflow = predictors(model_dir, batch_size, onnx_files(model_dir, work))
    runners = variants(model_dir, batch_size, nerflow)
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
    paths = end_to_end(model_dir, nerflow, texts, rounds, work)
    e2e = {row["path"]: row for row in paths}
    spans_of = {name: [[(e["entity"], e["start"], e["end"]) for e in doc] for doc in outputs[name]] for name in nerflow}
    summary = {
        "sentences": len(texts),
        "rounds": rounds,
        "batch_size": batch_size,
        "nerflow_vs_one_per_call": round(baseline / best["nerflow"], 2),
        "nerflow_vs_batched_pipeline": round(best["pipeline, batched"] / best["nerflow"], 2),
        "nerflow_f1_vs_gold": f1s["nerflow"],
        "pipeline_f1_vs_gold": f1s["pipeline, batched"],
        "onnx_fp32_same_entities_as_torch": spans_of["nerflow, onnx fp32"] == spans_of["nerflow"],
        "onnx_fp32_f1_vs_gold": f1s["nerflow, onnx fp32"],
        "onnx_int8_f1_vs_gold": f1s["nerflow, onnx int8"],
        "onnx_int8_f1_minus_torch": round(f1s["nerflow, onnx int8"] - f1s["nerflow"], 4),
        "end_to_end_vs_bare_forward": {name: row["end_to_end_vs_bare_forward"] for name, row in e2e.items()},
        "onnx_int8_end_to_end_vs_torch": round(
            e2e["nerflow"]["end_to_end_s"] / e2e["nerflow, onnx int8"]["end_to_end_s"], 2
        ),
        "target": {
            "nerflow_vs_one_per_call": ">= 5",
            "end_to_end_vs_bare_forward": ">= 0.7",
            "onnx_int8_end_to_end_vs_torch": ">= 2 (F1 within 0.01)",
        },
    }
    return rows + paths, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--model", help="a trained model folder (RUN_DIR/model); default: MiniLM fine-tuned here")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default="bench/results/predict.json")
    args = parser.parse_args()

    folder = data_dir(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            small = subset(folder, Path(tmp) / "data", {"train": 2000, "validation": 500, "test": 500})
            model_dir = fine_tuned_minilm(small, Path(tmp) / "runs")
        rows, summary = measure(
            model_dir, gold_sentences(folder, args.sentences), args.rounds, args.batch_size, Path(tmp)
        )
    report(
        f"Batch prediction, {args.sentences} WikiANN-en test sentences (CPU threads as torch sets them)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
