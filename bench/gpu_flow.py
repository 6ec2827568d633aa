"""The real `finetune_ner` flow on a GPU: WikiANN-en 20k/10k/10k, a MiniLM-L6-shaped model, 3 epochs.

The model has all-MiniLM-L6-v2's shape and tokenizer but random weights (no weights travel to the GPU
machine): build it from a folder holding the config and tokenizer files (bench/gpu_prepare.sh copies
them). Each variant runs the whole flow cold (its own output and cache folders, Prefect's temporary
server included) and reports wall time, training time, compile time and word-level test F1.

    python -m bench.gpu_flow --data .gpu/wikiann_en --shape .gpu/minilm-shape
    python -m bench.gpu_flow ... --variants compiled eager --epochs 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import report

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def random_model(shape: Path, dest: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    shutil.copytree(shape, dest)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(shape)).save_pretrained(dest)
    return dest


def run_flow(data: Path, model: Path, out: Path, epochs: int, compile_mode: str, smoke: bool) -> dict:
    from nerflow.flows.cli.serve import temporary_server_when_needed
    from nerflow.tasks.settings import RunSettings

    settings = RunSettings.model_validate(
        {
            "dataset": {
                "source": str(data),
                "language": "en",
                **({"max_train_samples": 200, "max_eval_samples": 100} if smoke else {}),
            },
            "base_model": {"name": str(model), "hub_id": "sentence-transformers/all-MiniLM-L6-v2"},
            "train": {"epochs": epochs, "learning_rate": 1e-4, "batch_size": 16},
            "compute": {"compile": compile_mode},
            "output_dir": str(out),
            "run_name": f"gpu-{compile_mode}",
        }
    )
    started = time.perf_counter()
    with temporary_server_when_needed() as use_server:
        from nerflow.flows.finetune import finetune_ner

        with use_server():
            result = finetune_ner(settings=settings)
    wall = time.perf_counter() - started
    return {
        "variant": "compiled" if compile_mode == "on" else "eager",
        "flow_wall_s": round(wall, 1),
        "train_s": round(result.train_runtime_s, 1),
        "compile_s": round(result.compile_s, 1),
        "outside_training_s": round(wall - result.train_runtime_s, 1),
        "test_f1": round(result.test_f1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a WikiANN-en folder (train/validation/test jsonl + labels.txt)")
    parser.add_argument("--shape", required=True, help="config.json + tokenizer files of all-MiniLM-L6-v2, no weights")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["compiled", "eager"], choices=["compiled", "eager"])
    parser.add_argument("--smoke", action="store_true", help="200 training sentences (checks the script on a CPU)")
    parser.add_argument("--json", default="bench/results/gpu_flow.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data, data)
        if not (data / "labels.txt").is_file():
            (data / "labels.txt").write_text("\n".join(LABELS) + "\n")
        model = random_model(Path(args.shape), Path(tmp) / "model")
        rows = []
        for variant in args.variants:
            rows.append(
                run_flow(
                    data, model, Path(tmp) / variant, args.epochs, "on" if variant == "compiled" else "off", args.smoke
                )
            )
            print(rows[-1], flush=True)
    by = {r["variant"]: r for r in rows}
    summary = {
        "epochs": args.epochs,
        **(
            {"compiled_minus_eager_test_f1": round(by["compiled"]["test_f1"] - by["eager"]["test_f1"], 4)}
            if len(by) == 2
            else {}
        ),
        **(
            {
                "compiled_train_s": by["compiled"]["train_s"],
                "compiled_outside_training_s": by["compiled"]["outside_training_s"],
            }
            if "compiled" in by
            else {}
        ),
        "targets": {
            "compiled_train_s": "< 30",
            "compiled_outside_training_s": "<= 20",
            "compiled_minus_eager_test_f1": "within 0.01",
        },
    }
    report(
        "The finetune_ner flow on a GPU: compiled vs eager (WikiANN-en, MiniLM-L6 shape, random weights)",
        rows,
        summary,
        args.json,
    )


if __name__ == "__main__":
    main()
