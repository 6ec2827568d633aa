"""GPU benchmark (run on a lent GPU, never in CI): the tutorial's settings against nerflow's GPU path.

A randomly initialised model of bert-base-multilingual-cased's shape is trained on synthetic data shaped
like WikiANN bn (10,000 training sentences, its short-sentence length distribution, batch 16, lr 2e-5),
evaluating 1,000 validation sentences after each epoch. Variants:

- `tutorial`: the tutorial's Trainer settings (fp32, random batches, full-logits evaluation);
- `eager`: nerflow's train_model (the real step) with static-shape batches, bf16, no compilation;
- `compiled`: the same with compute.compile=on (torch.compile, CUDA graphs): nerflow's default on CUDA;
- `lean`: a hand-written loop (no Trainer) with the same static shapes, bf16, fused AdamW and
  torch.compile(mode="reduce-overhead"), to show what the Trainer's own per-step work costs.

Reported per variant: training seconds (compile time apart), tokens/s without compile time, model FLOPs
utilisation against a measured H100 bf16 peak, seconds per epoch, peak GPU memory, validation F1.

    python -m bench.gpu                                    # all variants (tutorial and eager: 1 epoch)
    python -m bench.gpu --variants compiled lean --epochs 7
    python -m bench.gpu --smoke                            # a tiny model on the CPU: checks the script

The smoke mode on a CPU compiles with the `aot_eager` backend: dynamo's capture and AOTAutograd (where
graph breaks and tracing errors show) run as on the GPU, but no C++ kernels are generated, which a CPU
run only needs for itself and which cost minutes per shape there.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from bench.common import LABELS, report

# Dense bf16 throughput measured on one H100 SXM with large matmuls (about 80% of the 989 TFLOP/s spec).
H100_MEASURED_BF16_FLOPS = 790e12
MAX_LENGTH = 128


def synthetic_split(n: int, vocab: int, seed: int, max_words: int = 64):
    """Sentences with WikiANN-bn-like lengths: median ~6 words, long tail; 1-3 subwords per word."""
    import numpy as np
    from datasets import Dataset

    from nerflow.tasks.data.alignment import align_labels

    rng = np.random.default_rng(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "word_ids": [], "word_labels": []}
    for _ in range(n):
        n_words = int(min(max_words, max(1, round(rng.lognormal(mean=1.8, sigma=0.55)))))
        word_labels = rng.integers(0, len(LABELS), n_words).tolist()
        ids, wids = [101], [None]
        for w in range(n_words):
            pieces = int(rng.choice([1, 1, 2, 2, 3]))
            ids += rng.integers(1000, vocab, pieces).tolist()
            wids += [w] * pieces
        ids, wids = ids[: MAX_LENGTH - 1] + [102], wids[: MAX_LENGTH - 1] + [None]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(align_labels(wids, word_labels, "first", {}))
        rows["word_ids"].append(wids)
        rows["word_labels"].append(word_labels)
    return Dataset.from_dict(rows)


def model_config(smoke: bool):
    from transformers import BertConfig

    labels = {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {n: i for i, n in enumerate(LABELS)},
    }
    if smoke:
        return BertConfig(
            vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, **labels
        )
    # bert-base-multilingual-cased: 119,547 wordpieces, 12 x 768, ~85M non-embedding parameters.
    return BertConfig(
        vocab_size=119547,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        **labels,
    )


def write_fixture(root: Path, smoke: bool, sentences: int) -> tuple[Path, Path]:
    """A random model folder (with a stub WordPiece tokenizer) and a tokenized dataset on disk, as the
    tokenize step leaves them, so the variants run nerflow's real training step."""
    import datasets
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from transformers import BertForTokenClassification, BertTokenizerFast

    config = model_config(smoke)
    torch.manual_seed(0)
    model_dir = root / "random-model"
    BertForTokenClassification(config).save_pretrained(model_dir)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    stub = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))  # the collator needs the pad id only
    BertTokenizerFast(
        tokenizer_object=stub,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    ).save_pretrained(model_dir)
    data = datasets.DatasetDict(
        {
            "train": synthetic_split(sentences, config.vocab_size, seed=0),
            "validation": synthetic_split(max(50, sentences // 10), config.vocab_size, seed=1),
            "test": synthetic_split(50, config.vocab_size, seed=2),
        }
    )
    tokenized_dir = root / "tokenized"
    data.save_to_disk(str(tokenized_dir / "data"))
    return model_dir, tokenized_dir


def nerflow_job(model_dir: Path, tokenized_dir: Path, out: Path, epochs: int, compile_mode: str, backend: str):
    from nerflow.tasks.refs import RunContext, TokenizedRef, TrainJob
    from nerflow.tasks.settings import RunSettings

    tokenized = TokenizedRef(
        path=str(tokenized_dir), cache_key="bench", dataset_fingerprint="bench", base_model=str(model_dir),
        tokenizer_fingerprint="bench", alignment="first", max_length=MAX_LENGTH, label_names=LABELS, stats={}, roundtrip={}, warnings=[],
    )  # fmt: skip
    settings = RunSettings.model_validate(
        {
            "base_model": {"name": str(model_dir)},
            "train": {
                "epochs": epochs,
                "learning_rate": 2e-5,
                "batch_size": 16,
                # transformers turns compilation on when a backend is named: only the compiled variant names one.
                "trainer_args": {"torch_compile_backend": backend} if compile_mode == "on" else {},
            },
            "compute": {"eval_batch_size": 256, "compile": compile_mode},
            "records": {"save_total_limit": 1},
            "evaluation": {"decoding": "iob2"},
        }
    )
    return TrainJob.for_run(settings, tokenized, RunContext(run_name=out.name, run_dir=str(out), cache_dir=str(out)))


def run_nerflow(model_dir: Path, tokenized_dir: Path, out: Path, epochs: int, compile_mode: str, backend: str) -> dict:
    from nerflow.tasks.train import train_model

    ref = train_model(nerflow_job(model_dir, tokenized_dir, out, epochs, compile_mode, backend))
    return {
        "wall_s": ref.train_runtime_s,
        "compile_s": ref.compile_s,
        "val_f1": ref.epochs[-1]["val_f1"] if ref.epochs else None,
        "precision": ref.precision,
        "batching": ref.batching,
    }


def run_tutorial(model_dir: Path, tokenized_dir: Path, out: Path, epochs: int) -> dict:
    import datasets
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        PrinterCallback,
        Trainer,
    )

    from bench.tutorial_recipe import make_compute_metrics, training_arguments
    from nerflow.tasks.scoring.inference import choose_device

    data = datasets.load_from_disk(str(tokenized_dir / "data"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = choose_device("fp32")[0]
    args = training_arguments(str(out), epochs, use_cpu=device == "cpu")
    args.save_strategy = "no"
    columns = ["input_ids", "attention_mask", "labels"]
    trainer = Trainer(
        model=AutoModelForTokenClassification.from_pretrained(model_dir),
        args=args,
        train_dataset=data["train"].select_columns(columns),
        eval_dataset=data["validation"].select_columns(columns),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=make_compute_metrics(LABELS),
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    _synchronize()
    val = [e["eval_f1"] for e in trainer.state.log_history if "eval_f1" in e]
    return {
        "wall_s": time.perf_counter() - started,
        "compile_s": 0.0,
        "val_f1": val[-1] if val else None,
        "precision": "fp32",
        "batching": "random",
    }


def run_lean(model_dir: Path, tokenized_dir: Path, out: Path, epochs: int, backend: str) -> dict:
    """A hand-written loop: static shapes, bf16 autocast, fused AdamW, torch.compile with CUDA graphs."""
    import datasets
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup

    from nerflow.tasks.scoring.inference import choose_device, predict_tokenized
    from nerflow.tasks.scoring.metrics import seqeval_scores, word_level_sequences
    from nerflow.tasks.training.batching import STATIC_BUCKET, FullBatches, PadCollator
    from nerflow.tasks.training.trainer import compile_seconds

    device, bf16, fp16 = choose_device("auto")
    data = datasets.load_from_disk(str(tokenized_dir / "data"))
    train = data["train"].select_columns(["input_ids", "labels"])
    model = AutoModelForTokenClassification.from_pretrained(model_dir).to(device)
    sampler = FullBatches(len(train), 16, seed=42)
    loader = DataLoader(
        train,
        batch_size=16,
        sampler=sampler,
        collate_fn=PadCollator(0, STATIC_BUCKET, MAX_LENGTH),
        pin_memory=device == "cuda",
    )
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=2e-5,
        fused=device == "cuda",
    )
    steps = len(loader) * epochs
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
    compiled = torch.compile(model, mode="reduce-overhead" if device == "cuda" else None, backend=backend)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
    compile_before, started, val_f1 = compile_seconds(), time.perf_counter(), None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        for batch in loader:
            with autocast:
                loss = compiled(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        predictions = predict_tokenized(
            model,
            data["validation"],
            256,
            LABELS,
            pad_multiple=STATIC_BUCKET,
            autocast_dtype=torch.bfloat16 if bf16 else None,
        )
        val_f1 = seqeval_scores(
            *word_level_sequences(predictions.word_scores, list(data["validation"]["word_labels"]), LABELS, "iob2")
        )["f1"]
    _synchronize()
    return {
        "wall_s": time.perf_counter() - started,
        "compile_s": compile_seconds() - compile_before,
        "val_f1": val_f1,
        "precision": "bf16" if bf16 else "fp32",
        "batching": "static",
    }


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(variant: str, fixture: tuple[Path, Path], out: Path, epochs: int, backend: str) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runners = {
        "tutorial": lambda: run_tutorial(*fixture, out, epochs),
        "eager": lambda: run_nerflow(*fixture, out, epochs, "off", backend),
        "compiled": lambda: run_nerflow(*fixture, out, epochs, "on", backend),
        "lean": lambda: run_lean(*fixture, out, epochs, backend),
    }
    result = runners[variant]()
    return result | {
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    }


def row(variant: str, result: dict, epochs: int, tokens_per_epoch: int, non_embedding: int) -> dict:
    train_s = result["wall_s"] - result["compile_s"]
    tokens = tokens_per_epoch * epochs
    on_gpu = result["peak_gpu_mem_gib"] is not None
    return {
        "variant": variant,
        "precision": result["precision"],
        "batching": result["batching"],
        "epochs": epochs,
        "wall_s": round(result["wall_s"], 2),
        "compile_s": round(result["compile_s"], 2),
        "train_s": round(train_s, 2),
        "s_per_epoch": round(train_s / epochs, 2),
        "tokens_per_s": round(tokens / train_s),
        "mfu": round(6 * non_embedding * tokens / train_s / H100_MEASURED_BF16_FLOPS, 4) if on_gpu else None,
        "peak_gpu_mem_gib": result["peak_gpu_mem_gib"],
        "val_f1": round(result["val_f1"], 4) if result["val_f1"] is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 192 sentences, 1 epoch (runs on a CPU)")
    parser.add_argument("--sentences", type=int, default=10000)
    parser.add_argument(
        "--epochs", type=int, default=7, help="epochs of the compiled and lean variants (the recipe: 7)"
    )
    parser.add_argument(
        "--baseline-epochs", type=int, default=1, help="epochs of the tutorial and eager variants (throughput only)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["tutorial", "eager", "compiled", "lean"],
        choices=["tutorial", "eager", "compiled", "lean"],
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of the compiled and lean variants (default: inductor; aot_eager for --smoke on a CPU)",
    )
    parser.add_argument("--json", default="bench/results/gpu.json")
    args = parser.parse_args()
    import torch

    backend = args.compile_backend or ("aot_eager" if args.smoke and not torch.cuda.is_available() else "inductor")
    # 12 full batches of 16 in the smoke: a short last batch would make dynamo compile the compiled
    # variant a third time (for the batch size), the costliest part of the smoke on a CPU.
    sentences = 192 if args.smoke else args.sentences
    epochs = {
        v: (1 if args.smoke else args.baseline_epochs if v in ("tutorial", "eager") else args.epochs)
        for v in args.variants
    }
    with tempfile.TemporaryDirectory() as tmp:
        fixture = write_fixture(Path(tmp), args.smoke, sentences)
        import datasets

        train_lengths = [len(x) for x in datasets.load_from_disk(str(fixture[1] / "data"))["train"]["input_ids"]]
        config = model_config(args.smoke)
        non_embedding = 12 * config.num_hidden_layers * config.hidden_size**2  # attention + MLP weights (4x MLP)
        rows = [
            row(v, measure(v, fixture, Path(tmp) / v, epochs[v], backend), epochs[v], sum(train_lengths), non_embedding)
            for v in args.variants
        ]
    by = {r["variant"]: r for r in rows}
    summary = {
        "smoke": args.smoke,
        "compile_backend": backend,
        "sentences": sentences,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        **(
            {
                "compiled_vs_tutorial_tokens_per_s": round(
                    by["compiled"]["tokens_per_s"] / by["tutorial"]["tokens_per_s"], 2
                )
            }
            if {"compiled", "tutorial"} <= set(by)
            else {}
        ),
        **(
            {"lean_vs_compiled_tokens_per_s": round(by["lean"]["tokens_per_s"] / by["compiled"]["tokens_per_s"], 2)}
            if {"compiled", "lean"} <= set(by)
            else {}
        ),
        **(
            {"compiled_train_s": by["compiled"]["train_s"], "compiled_compile_s": by["compiled"]["compile_s"]}
            if "compiled" in by
            else {}
        ),
        "targets": {"compiled_vs_tutorial_tokens_per_s": ">= 5", "compiled_train_s": "< 30 (7 epochs, one H100/H200)"},
    }
    if any(r["tokens_per_s"] <= 0 or math.isnan(r["tokens_per_s"]) for r in rows):
        raise SystemExit("no throughput measured")
    report(
        "GPU training: tutorial settings vs nerflow's eager, compiled and lean paths (random mBERT-sized model)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
