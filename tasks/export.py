"""export: the trained model as ONNX (fp32, and dynamic int8 when it keeps its score), with a parity report.

`model/onnx/` holds `model.onnx`, optionally `model_quantized.onnx`, and `parity.json`: on the test
split, word-level F1 of torch, ONNX fp32 and int8 (the same decoding), the largest logit difference, the
share of words whose tag changes, and sentences per second of each. The export fails with a clear
message and leaves no `onnx/` folder when fp32 changes any tag; int8 is kept only within
`export.int8_f1_tolerance` of torch's F1, and the report says why when it is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from nerflow.tasks.exporting.onnx import (
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    PARITY_FILE,
    OnnxNetwork,
    export_fp32,
    quantize_int8,
)
from nerflow.tasks.refs import ExportRef, ModelRef, RunContext, TokenizedRef
from nerflow.tasks.runtime.errors import ExportError
from nerflow.tasks.runtime.files import atomic_dir, atomic_write_json, is_sealed
from nerflow.tasks.scoring.inference import predict_tokenized
from nerflow.tasks.scoring.metrics import seqeval_scores, word_level_sequences
from nerflow.tasks.settings import ComputeSettings, ExportSettings


def _score(network, split, names: list[str], decoding: str, batch_size: int, pad_id: int) -> dict[str, Any]:
    started = time.perf_counter()
    predictions = predict_tokenized(network, split, batch_size, names, pad_id=pad_id)
    seconds = time.perf_counter() - started
    gold, tags = word_level_sequences(predictions.word_scores, list(split["word_labels"]), names, decoding)
    return {
        "f1": round(seqeval_scores(gold, tags)["f1"], 4),
        "sentences_per_s": round(len(split) / seconds, 1),
        "tags": tags,
    }


def _largest_logit_difference(torch_net, onnx_net, split, pad_id: int, rows: int = 64) -> float:
    """Largest |logit| difference between torch and ONNX over a padded batch of test sentences."""
    import torch

    from nerflow.tasks.training.batching import PadCollator

    batch = PadCollator(pad_id)([{"input_ids": ids} for ids in list(split["input_ids"])[:rows]])
    with torch.inference_mode():
        expected = torch_net(**batch).logits.float()
    got = onnx_net(**batch).logits
    mask = batch["attention_mask"].bool()
    return float((expected - got).abs()[mask].max())


def _changed(tags: list[list[str]], reference: list[list[str]]) -> float:
    words = sum(len(t) for t in reference)
    return round(sum(a != b for x, y in zip(tags, reference) for a, b in zip(x, y)) / max(words, 1), 6)


def parity_report(model_dir: Path, folder: Path, tokenized: TokenizedRef, decoding: str, batch_size: int) -> dict:
    """Score torch, fp32 and int8 (where present in `folder`) on the test split, side by side."""
    from transformers import AutoTokenizer

    from nerflow.tasks.training.pretrained import load_network

    split, names = tokenized.load()["test"], tokenized.label_names
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0
    torch_net = load_network(model_dir).to("cpu").eval()
    backends = {"torch": torch_net, "onnx_fp32": OnnxNetwork(folder / FP32_FILE)}
    if (folder / INT8_FILE).is_file():
        backends["onnx_int8"] = OnnxNetwork(folder / INT8_FILE)
    scored = {name: _score(net, split, names, decoding, batch_size, pad_id) for name, net in backends.items()}
    report = {"split": "test", "sentences": len(split), "decoding": decoding, "backends": {}}
    for name, result in scored.items():
        entry = {"f1": result["f1"], "sentences_per_s": result["sentences_per_s"]}
        if name != "torch":
            entry["changed_word_share"] = _changed(result["tags"], scored["torch"]["tags"])
            entry["largest_logit_difference"] = round(
                _largest_logit_difference(torch_net, backends[name], split, pad_id), 6
            )
            entry["speedup_vs_torch"] = round(result["sentences_per_s"] / scored["torch"]["sentences_per_s"], 2)
        report["backends"][name] = entry
    return report


def _drop_int8_if_worse(folder: Path, report: dict, tolerance: float) -> None:
    int8 = report["backends"].get("onnx_int8")
    if int8 is None:
        return
    loss = report["backends"]["torch"]["f1"] - int8["f1"]
    if loss > tolerance:
        (folder / INT8_FILE).unlink()
        report["int8"] = (
            f"dropped: its test F1 is {loss:.4f} below torch's, more than export.int8_f1_tolerance={tolerance}"
        )
        del report["backends"]["onnx_int8"]
    else:
        report["int8"] = f"kept: test F1 within {tolerance} of torch's ({-loss:+.4f})"


def export_model(
    model_dir: Path, tokenized: TokenizedRef, cfg: ExportSettings, decoding: str, batch_size: int
) -> ExportRef:
    """Write model/onnx/ whole, or nothing: the folder appears, sealed, only once parity held."""
    model_dir = Path(model_dir)
    final = model_dir / ONNX_DIR
    with atomic_dir(final, replace=True) as tmp:
        inputs = export_fp32(model_dir, tmp / FP32_FILE, cfg.opset)
        if cfg.int8:
            quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE)
        report = parity_report(model_dir, tmp, tokenized, decoding, batch_size)
        report |= {"inputs": inputs, "settings": cfg.model_dump(mode="json")}
        changed = report["backends"]["onnx_fp32"]["changed_word_share"]
        if changed > 0:
            raise ExportError(
                f"ONNX export of {model_dir}: fp32 changes the tags of {changed:.2%} of the test words "
                f"(largest logit difference {report['backends']['onnx_fp32']['largest_logit_difference']}); "
                "nothing was written"
            )
        if cfg.int8:
            _drop_int8_if_worse(tmp, report, cfg.int8_f1_tolerance)
        atomic_write_json(tmp / PARITY_FILE, report)
    return ExportRef(path=str(final), parity=report)


def existing_export(model_dir: Path, cfg: ExportSettings) -> ExportRef | None:
    """The model's ONNX export, if a complete one made with these settings is already there."""
    import json

    folder = Path(model_dir) / ONNX_DIR
    if not is_sealed(folder) or not (folder / PARITY_FILE).is_file():
        return None
    report = json.loads((folder / PARITY_FILE).read_text())
    return ExportRef(path=str(folder), parity=report) if report.get("settings") == cfg.model_dump(mode="json") else None


def export(
    model: ModelRef, tokenized: TokenizedRef, cfg: ExportSettings, compute: ComputeSettings, ctx: RunContext
) -> ExportRef | None:
    """The ONNX export the settings ask for (None when export.onnx is off)."""
    if not cfg.onnx:
        return None
    model_dir = Path(model.path)
    decoding = model_decoding(model_dir)
    return existing_export(model_dir, cfg) or export_model(model_dir, tokenized, cfg, decoding, compute.eval_batch_size)


def model_decoding(model_dir: Path) -> str:
    """How the model's word tags are read (config.json's nerflow_decoding, written at training)."""
    import json

    return json.loads((Path(model_dir) / "config.json").read_text()).get("nerflow_decoding") or "argmax"


def parity_table(report: dict) -> list[dict[str, Any]]:
    return [{"backend": name, **values} for name, values in report["backends"].items()]


@task(name="export-onnx", cache_policy=NO_CACHE)  # idempotent: an export with these settings is kept
def export_task(
    model: ModelRef, tokenized: TokenizedRef, cfg: ExportSettings, compute: ComputeSettings, ctx: RunContext
) -> ExportRef | None:
    ref = export(model, tokenized, cfg, compute, ctx)
    if ref is not None:
        create_table_artifact(
            key="onnx-parity", table=parity_table(ref.parity), description="ONNX export: test split, same decoding"
        )
        get_run_logger().info("ONNX export in %s: %s", ref.path, ref.parity.get("int8", "fp32 only"))
    return ref
