"""The trained model as ONNX: torch's exporter, onnxruntime's dynamic int8 quantisation, and a session that
stands in for the torch network wherever nerflow scores words.

The files follow the layout of ONNX model repositories on the Hub (`onnx/model.onnx`,
`onnx/model_quantized.onnx` beside the config and tokenizer in the model folder), with dynamic batch
and sequence axes and the tokenizer's own input names, so other ONNX runtimes that read that layout load
it. Hugging Face Optimum's exporter would write the same; its release on the registry requires
transformers < 4.58, which nerflow's transformers 5 rules out.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
ONNX_DIR = "onnx"
PARITY_FILE = "parity.json"

log = logging.getLogger(__name__)


def export_fp32(model_dir: str | Path, out_file: Path, opset: int) -> list[str]:
    """Write the model as ONNX (fp32, dynamic batch and sequence); returns its input names."""
    import torch
    from transformers import AutoTokenizer

    from nerflow.tasks.training.pretrained import load_network

    network = load_network(model_dir).to("cpu").eval()
    network.config.return_dict = False  # a plain tuple out: one named output, `logits`
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    example = tokenizer(["Angela Merkel visited New York .", "Paris"], return_tensors="pt", padding=True)
    batch, sequence = (
        torch.export.Dim("batch"),
        torch.export.Dim("sequence", max=network.config.max_position_embeddings),
    )
    # torch.export, not the TorchScript tracer: a trace records the attention-mask code's Python branches
    # for the example's shapes, and the exported model then scores other paddings wrongly.
    with warnings.catch_warnings():  # torch.export's notes on axis names and deprecations, not problems
        warnings.simplefilter("ignore")
        program = _export(torch, network, example, names, batch, sequence, opset)
    program.save(str(out_file), external_data=False)  # one file, as small models ship on the Hub
    return names


def _export(torch, network, example, names: list[str], batch, sequence, opset: int):
    return torch.onnx.export(
        network,
        (),
        kwargs={n: example[n] for n in names},
        input_names=names,
        output_names=["logits"],
        dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )


def quantize_int8(fp32_file: Path, out_file: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time): CPU-friendly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static (calibrated) quantisation
    try:
        # Per-channel scales keep about half the F1 that one scale per weight matrix loses, for ~4% of speed.
        quantize_dynamic(str(fp32_file), str(out_file), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


class OnnxNetwork:
    """An onnxruntime session with the call shape nerflow's scoring uses for a torch network:
    `network(input_ids=..., attention_mask=...).logits`, on the CPU."""

    def __init__(self, onnx_file: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Idle worker threads otherwise spin after each run, taking the CPU from the scoring that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.file = Path(onnx_file)
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def parameters(self):
        import torch

        yield torch.zeros(1)  # where inputs go: the CPU

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, input_ids, attention_mask=None, **_) -> SimpleNamespace:
        import torch

        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = attention_mask.cpu().numpy().astype(np.int64) if attention_mask is not None else np.ones_like(ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (logits,) = self.session.run(["logits"], {n: feeds[n] for n in self.input_names})
        return SimpleNamespace(logits=torch.from_numpy(logits))


def onnx_file(model_dir: str | Path, precision: str = "best") -> Path | None:
    """The model folder's ONNX file: 'int8' or 'fp32', or 'best' (int8 when the export kept it, else fp32);
    None when the model has no complete ONNX export."""
    from nerflow.tasks.runtime.files import is_sealed

    folder = Path(model_dir) / ONNX_DIR
    if not is_sealed(folder):
        return None
    int8, fp32 = folder / INT8_FILE, folder / FP32_FILE
    if precision == "int8":
        return int8 if int8.is_file() else None
    if precision == "fp32":
        return fp32 if fp32.is_file() else None
    return int8 if int8.is_file() else fp32 if fp32.is_file() else None
