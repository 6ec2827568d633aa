"""Benchmark scripts must run anywhere in their smoke modes (GPU ones) or at a tiny size, and end with their JSON summary line
(they measure nothing here: speed is measured by bench/ on a lent GPU, not by tests)."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR

pytestmark = pytest.mark.slow  # benchmark scripts in subprocesses, torch.compile on the CPU


def run_bench(module: str, *args: str) -> tuple[dict, dict]:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_gpu_benchmark_smoke_runs_every_variant_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    summary, _ = run_bench("bench.gpu", "--smoke", "--json", str(out))
    assert summary["smoke"] is True and summary["compiled_vs_tutorial_tokens_per_s"] > 0
    assert summary["compile_backend"] == "aot_eager"  # dynamo and AOTAutograd, no C++ kernels on the CPU
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["tutorial", "eager", "compiled", "lean"]
    # The compiled variant really compiled (its compile time is reported apart) and still learned the same
    # way as the eager one: same seed, same batches.
    assert rows["compiled"]["compile_s"] > 0 and rows["eager"]["compile_s"] == 0
    assert abs(rows["compiled"]["val_f1"] - rows["eager"]["val_f1"]) <= 0.01


def test_gpu_flow_benchmark_smoke(tmp_path, tiny_bert):
    shape = tmp_path / "shape"  # config and tokenizer files only, as bench/gpu_prepare.sh copies them
    shape.mkdir()
    for source in tiny_bert.iterdir():  # the tiny BERT's shape: the smoke checks the script, not MiniLM's speed
        if source.suffix in (".json", ".txt"):
            shutil.copy(source, shape / source.name)
    out = tmp_path / "flow.json"
    summary, _ = run_bench(
        "bench.gpu_flow",
        "--smoke",
        "--data",
        str(SAMPLE_DIR),
        "--shape",
        str(shape),
        "--variants",
        "eager",
        "--epochs",
        "1",
        "--json",
        str(out),
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert (
        row["variant"] == "eager"
        and row["train_s"] > 0
        and row["flow_wall_s"] > row["train_s"]
        and 0 <= row["test_f1"] <= 1
    )


def test_predict_benchmark_compares_every_variant_on_the_same_sentences(tmp_path, tiny_bert):
    from transformers import AutoTokenizer, BertForTokenClassification

    labels = (SAMPLE_DIR / "labels.txt").read_text().split()
    model_dir = tmp_path / "tagger"  # an untrained head: the benchmark measures speed, and scores what it gets
    BertForTokenClassification.from_pretrained(
        tiny_bert, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    ).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(model_dir)
    out = tmp_path / "predict.json"
    summary, _ = run_bench(
        "bench.predict",
        "--data",
        str(SAMPLE_DIR),
        "--model",
        str(model_dir),
        "--sentences",
        "40",
        "--rounds",
        "1",
        "--json",
        str(out),
    )
    all_rows = json.loads(out.read_text())["rows"]
    rows = {r["variant"]: r for r in all_rows if "variant" in r}
    paths = {r["path"]: r for r in all_rows if "path" in r}
    nerflow = ["nerflow", "nerflow, onnx fp32", "nerflow, onnx int8"]
    assert list(rows) == ["pipeline, one call per sentence", "pipeline, batched", *nerflow] and list(paths) == nerflow
    assert all(p["end_to_end_vs_bare_forward"] > 0 and p["bare_forward_s"] > 0 for p in paths.values())
    assert summary["onnx_fp32_same_entities_as_torch"] is True  # an exact export tags as torch does
    assert (
        summary["sentences"] == 40
        and summary["nerflow_vs_one_per_call"] == rows["nerflow"]["speedup_vs_one_per_call"] > 0
    )
    assert (
        rows["pipeline, one call per sentence"]["entities"] == rows["pipeline, batched"]["entities"]
    )  # same model, same answers
    assert all(0 <= r["f1_vs_gold"] <= 1 for r in rows.values())
