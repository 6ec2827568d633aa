"""ONNX export: a run with export.onnx writes model/onnx/ in the layout ONNX repositories on the Hub use,
a plain onnxruntime session reproduces the torch model, `nerflow export` and `nerflow predict --backend
onnx` work from the command line with the same entities as torch, and a broken export leaves nothing.

One finetune_ner run trains the tiny BERT on the synthetic pattern (it learns it to near perfect F1,
so a tag that changes is visible) and exports it; the other tests use its run folder.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_synthetic_dataset
from nerflow.tasks.exporting.onnx import FP32_FILE, INT8_FILE, ONNX_DIR, PARITY_FILE
from nerflow.tasks.runtime.files import SEAL, is_sealed

pytestmark = pytest.mark.slow  # a flow run, torch.export and subprocesses of the CLI


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    from prefect_db import seeded_test_harness

    with seeded_test_harness():
        yield


@pytest.fixture(scope="module")
def exported_run(tiny_bert, tmp_path_factory):
    from conftest import tiny_run_settings
    from nerflow.flows.finetune import finetune_ner

    root = tmp_path_factory.mktemp("export")
    data = write_synthetic_dataset(root / "synthetic")
    settings = tiny_run_settings(
        tiny_bert,
        root / "runs",
        dataset={"source": str(data), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 3, "batch_size": 16, "learning_rate": 5e-3},
        export={"onnx": True},
        run_name="exported",
    )
    state = finetune_ner(settings=settings, return_state=True)
    assert state.is_completed(), state.message
    return Path(state.result().run_dir), data


def test_a_run_with_export_writes_the_hub_onnx_layout_with_its_parity(exported_run):
    run_dir, _ = exported_run
    folder = run_dir / "model" / ONNX_DIR
    assert is_sealed(folder) and {FP32_FILE, PARITY_FILE} <= {p.name for p in folder.iterdir()}
    parity = json.loads((folder / PARITY_FILE).read_text())
    torch_f1 = parity["backends"]["torch"]["f1"]
    assert torch_f1 > 0.9 and parity["backends"]["onnx_fp32"]["f1"] == torch_f1
    assert parity["backends"]["onnx_fp32"]["changed_word_share"] == 0.0
    assert parity["backends"]["onnx_fp32"]["largest_logit_difference"] < 1e-3
    kept = (folder / INT8_FILE).is_file()
    assert ("onnx_int8" in parity["backends"]) == kept and parity["int8"].startswith("kept" if kept else "dropped")
    if kept:
        assert abs(parity["backends"]["onnx_int8"]["f1"] - torch_f1) <= 0.01
    card = (run_dir / "model" / "README.md").read_text()
    assert "### ONNX" in card and "onnx/model.onnx" in card and "| onnx_fp32 |" in card
    # Published with the model, without nerflow's completeness records.
    from nerflow.tasks.publishing.s3 import run_files

    published = run_files(run_dir)
    assert f"model/onnx/{FP32_FILE}" in published and not any(SEAL in name for name in published)


def test_a_plain_onnxruntime_session_reproduces_the_torch_logits(exported_run):
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model_dir = exported_run[0] / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["Maria works in Berlin .", "Peter lives in Texas and Anna stays in Paris .", "x"]
    batch = tokenizer(texts, return_tensors="np", padding=True)
    session = ort.InferenceSession(str(model_dir / ONNX_DIR / FP32_FILE), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})
    network = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        expected = network(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    mask = batch["attention_mask"].astype(bool)
    assert logits.shape == expected.shape and np.abs(logits - expected)[mask].max() < 1e-4
    assert (logits.argmax(-1)[mask] == expected.argmax(-1)[mask]).all()


def nerflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "nerflow"
    return subprocess.run([str(cli), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_nerflow_export_and_predict_with_the_onnx_backend_find_what_torch_finds(exported_run, tmp_path):
    run_dir, data = exported_run
    copy = tmp_path / "runs" / "exported"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "model" / ONNX_DIR)
    done = nerflow("export", str(copy), "--no-int8", cwd=tmp_path)  # from another folder than the run's
    assert done.returncode == 0, done.stderr[-2000:]
    assert "backend=onnx_fp32" in done.stdout and not (copy / "model" / ONNX_DIR / INT8_FILE).exists()
    from nerflow.tasks.prediction.files import predict_file

    onnx_out, torch_out = tmp_path / "onnx.jsonl", tmp_path / "torch.jsonl"
    args = ["predict", str(copy / "model"), "--input", str(data / "test.jsonl"), "--output", str(onnx_out)]
    done = nerflow(*args, "--backend", "onnx", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # What torch finds, by the function behind the same command (here, not in a third process).
    predict_file(copy / "model", data / "test.jsonl", torch_out, backend="torch")
    outputs = {
        b: [json.loads(line) for line in f.read_text().splitlines()]
        for b, f in (("onnx", onnx_out), ("torch", torch_out))
    }

    def spans(rows):
        return [[(e["entity"], e["start_word"], e["end_word"]) for e in r["entities"]] for r in rows]

    assert spans(outputs["onnx"]) == spans(outputs["torch"]) and any(spans(outputs["torch"]))
    scores = {b: [e["score"] for r in rows for e in r["entities"]] for b, rows in outputs.items()}
    assert np.allclose(scores["onnx"], scores["torch"], atol=1e-3)


def test_a_broken_export_leaves_no_onnx_folder(exported_run, tmp_path, monkeypatch):
    import nerflow.tasks.export as export
    from conftest import prepare, tiny_run_settings
    from nerflow.tasks.runtime.errors import ExportError
    from nerflow.tasks.settings import ExportSettings

    run_dir, data = exported_run
    model_dir = tmp_path / "model"
    shutil.copytree(run_dir / "model", model_dir, ignore=shutil.ignore_patterns(ONNX_DIR))
    dataset = {"source": str(data), "max_train_samples": None, "max_eval_samples": None}
    settings = tiny_run_settings(model_dir, tmp_path / "runs", dataset=dataset)  # its test split, tokenized
    _, tokenized = prepare(settings)

    class Drifting(export.OnnxNetwork):  # an exporter bug: the graph computes other logits than torch
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out.logits[..., 0] += 5.0
            return out

    def exported_already(model, out_file, opset):  # the run's own export, instead of exporting again
        shutil.copy2(run_dir / "model" / ONNX_DIR / FP32_FILE, out_file)
        return ["input_ids", "token_type_ids", "attention_mask"]

    monkeypatch.setattr(export, "OnnxNetwork", Drifting)
    monkeypatch.setattr(export, "export_fp32", exported_already)
    with pytest.raises(ExportError, match="fp32 changes the tags of .* nothing was written"):
        export.export_model(model_dir, tokenized, ExportSettings(onnx=True, int8=False), "iob2", 16)
    assert sorted(p.name for p in model_dir.iterdir() if "onnx" in p.name) == []


def test_int8_is_dropped_when_it_costs_more_f1_than_the_tolerance(tmp_path):
    from nerflow.tasks.export import _drop_int8_if_worse

    (tmp_path / INT8_FILE).write_bytes(b"int8")
    report = {"backends": {"torch": {"f1": 0.90}, "onnx_fp32": {"f1": 0.90}, "onnx_int8": {"f1": 0.87}}}
    _drop_int8_if_worse(tmp_path, report, 0.01)
    assert not (tmp_path / INT8_FILE).exists() and "onnx_int8" not in report["backends"]
    assert report["int8"].startswith("dropped: its test F1 is 0.0300 below torch's")


def test_auto_picks_onnx_only_where_an_export_is_complete(exported_run, tmp_path):
    from nerflow.tasks.prediction.tagger import NerPredictor

    model_dir = exported_run[0] / "model"
    assert NerPredictor(model_dir).backend == "onnx" and NerPredictor(model_dir, backend="torch").backend == "torch"
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare)
    (bare / ONNX_DIR / SEAL).unlink()  # an export that never finished does not count
    assert NerPredictor(bare).backend == "torch"
    from nerflow.tasks.runtime.errors import InputError

    with pytest.raises(InputError, match="no complete ONNX export .*nerflow export RUN_DIR"):
        NerPredictor(bare, backend="onnx")
