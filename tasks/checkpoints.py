"""The pretrained checkpoint: where its folder is, its tokenizer, and a fingerprint of that tokenizer."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from tasks.settings import ModelSettings


def resolve_checkpoint(checkpoint: str) -> str:
    """'package:MODULE' names a model folder shipped inside a Python package (MODULE.get_model_path())."""
    if checkpoint.startswith("package:"):
        module = importlib.import_module(checkpoint.removeprefix("package:"))
        return str(module.get_model_path())
    return checkpoint


def load_tokenizer(pretrained: ModelSettings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(pretrained.checkpoint), revision=pretrained.revision)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"model.checkpoint {pretrained.checkpoint!r}: a fast tokenizer is required (word_ids() for label alignment)"
        )
    return tokenizer


# Files that hold weights, not tokenizer state: hashing them is the slow part and changes nothing.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt"}


def tokenizer_fingerprint(pretrained: ModelSettings) -> str:
    """What the tokenizer is made of, as a hash: the cache key's tokenizer part.

    A local checkpoint folder is fingerprinted by its top-level files (vocabulary, tokenizer.json,
    configs; weights skipped), which needs neither transformers nor a tokenizer load: an unchanged
    re-run finds its cache hit without loading anything. A Hub checkpoint is loaded (from the local HF cache
    once downloaded) and hashed by content: vocabulary, normalizer, pre-tokenizer, special tokens."""
    folder = Path(resolve_checkpoint(pretrained.checkpoint))
    if folder.is_dir():
        h = hashlib.sha256(b"files")
        for file in sorted(f for f in folder.iterdir() if f.is_file() and f.suffix not in WEIGHT_SUFFIXES):
            h.update(file.name.encode() + b"\x00" + hashlib.sha256(file.read_bytes()).digest())
        return h.hexdigest()
    tokenizer = load_tokenizer(pretrained)
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return h.hexdigest()
