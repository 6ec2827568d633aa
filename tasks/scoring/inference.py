"""Per-word label scores of a token-classification model: what validation, evaluation and prediction share.

A word is scored at its first subword (the position `first` alignment trains). Batches are sentences
sorted by length, so padding is small; results go back to dataset order by index. Only the label
log-probabilities at first subwords and the argmax at every subword leave the device, never a
(sentences x length x labels) buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitPredictions:
    word_scores: list[np.ndarray]
    """Per sentence, (words, labels) log-probabilities; a word without a subword in the input (cut by
    max_length, or yielding no subword) is certain to be O."""
    subword_argmax: list[list[int]]
    """Per sentence, the most likely label id at every subword position (the tutorial's score uses it)."""
    loss: float | None = None
    """Mean cross-entropy over labelled subwords, when labels were given."""


def choose_device(precision: str) -> tuple[str, bool, bool]:
    """(device, bf16, fp16): CUDA when present (bf16 where supported, else fp16), else the CPU in fp32."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", False, False
    if precision == "fp32":
        return "cuda", False, False
    bf16_ok = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise ValueError("compute.precision: bf16 was asked for but this GPU does not support it")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    return "cuda", use_bf16, not use_bf16


def first_subword_positions(word_ids: Sequence[int | None], n_words: int) -> list[int]:
    """Input position of each word's first subword; -1 for a word with none."""
    positions = [-1] * n_words
    for pos, wid in enumerate(word_ids):
        if wid is not None and positions[wid] < 0:
            positions[wid] = pos
    return positions


def predict_split(
    network,
    input_ids: Sequence[Sequence[int]],
    word_ids: Sequence[Sequence[int | None]],
    n_words: Sequence[int],
    batch_size: int,
    labels: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
    pad_multiple: int | None = None,
    autocast_dtype=None,
    outside_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SplitPredictions:
    """Run the network (a token-classification torch module, on its device, in eval mode) over
    tokenized sentences."""
    import torch  # here, not at the top: a flow run refused before it scores loads no torch

    from nerflow.tasks.training.batching import PadCollator, length_sorted_batches

    device = next(network.parameters()).device
    collate = PadCollator(pad_id, pad_multiple)
    n = len(input_ids)
    word_scores: list[np.ndarray] = [np.empty(0)] * n
    argmax: list[list[int]] = [[] for _ in range(n)]
    loss_sum, labelled = 0.0, 0
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    batches = length_sorted_batches([len(x) for x in input_ids], batch_size)
    with torch.inference_mode(), autocast:
        for done, batch in enumerate(batches, start=1):
            features = [
                {"input_ids": input_ids[i]} | ({"labels": labels[i]} if labels is not None else {}) for i in batch
            ]
            inputs = {k: v.to(device) for k, v in collate(features).items()}
            gold = inputs.pop("labels", None)
            logits = network(**inputs).logits.float()
            log_probs = torch.log_softmax(logits, dim=-1)
            firsts = [first_subword_positions(word_ids[i], n_words[i]) for i in batch]
            positions = PadCollator(0)([{"input_ids": [max(p, 0) for p in f] or [0]} for f in firsts])["input_ids"]
            gather = positions.to(device)[:, :, None].expand(-1, -1, log_probs.shape[-1])
            at_words = torch.gather(log_probs, 1, gather).cpu().numpy()
            best = logits.argmax(dim=-1).cpu().tolist()
            if gold is not None:
                loss_sum += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, reduction="sum"))
                labelled += int((gold != -100).sum())
            for row, i in enumerate(batch):
                scores = at_words[row, : n_words[i]].copy()
                missing = [w for w, p in enumerate(firsts[row]) if p < 0]
                if missing:
                    scores[missing] = -1e4
                    scores[missing, outside_id] = 0.0
                word_scores[i] = scores
                argmax[i] = best[row][: len(input_ids[i])]
            if progress is not None:
                progress(done, len(batches))
    return SplitPredictions(word_scores, argmax, loss_sum / labelled if labelled else None)


def predict_tokenized(network, split, batch_size: int, label_names: Sequence[str], **options) -> SplitPredictions:
    """predict_split over a tokenized split (columns input_ids, word_ids, word_labels, labels)."""
    word_labels = list(split["word_labels"])
    return predict_split(
        network,
        list(split["input_ids"]),
        list(split["word_ids"]),
        [len(w) for w in word_labels],
        batch_size,
        labels=list(split["labels"]) if "labels" in split.column_names else None,
        outside_id=list(label_names).index("O"),
        **options,
    )
