"""Which sentences share a training batch, and how batches are padded.

Three strategies (`train.batching`):

- `random`: random batches padded to their longest sentence, the plain recipe's.
- `length`: batches of sentences of similar length (little padding: on a CPU, where compute follows
  the padded tokens, an epoch costs about 0.6 of random batches), **in shuffled order**. The
  transformers `group_by_length` sampler emits each mega-batch's batches from longest to shortest, so
  on short-sentence data dozens of consecutive updates see nothing but bare entity names; shuffling the
  batch order spreads them through the epoch while keeping the padding savings.
- `static`: random batches (mixed lengths, like `random`) padded to a few fixed lengths (multiples of
  `STATIC_BUCKET` up to max_length) with a fixed batch size: a GPU replays one captured CUDA graph per
  shape instead of launching hundreds of small kernels per step. Buckets decide padding only, never
  which sentences share a batch.

`auto` is `static` on CUDA and `length` elsewhere. All samplers are deterministic per (seed, epoch),
which the Trainer's resume relies on to skip the batches an interrupted epoch already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

STATIC_BUCKET = 32  # padded lengths 32, 64, 96, 128 at max_length 128: four shapes to capture
_MEGA_BATCHES = 50  # sentences sorted together: 50 batches' worth, as transformers' group_by_length


def resolve_batching(batching: str, device: str) -> str:
    """The strategy `auto` stands for on this device (settings: train.batching)."""
    if batching != "auto":
        return batching
    return "static" if device == "cuda" else "length"


def pad_multiple(batching: str, device: str) -> int | None:
    """Padded lengths are multiples of this (None: exactly the longest sentence of the batch)."""
    if batching == "static":
        return STATIC_BUCKET
    return 8 if device == "cuda" else None  # tensor cores like multiples of 8; a CPU wants no extra padding


class _EpochSeeded(Sampler[int]):
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)


class ShuffledLengthGroups(_EpochSeeded):
    """Batches of similar length, in random order, the longest batch first; each sentence once per epoch.

    The longest batch leads (as in transformers' sampler) so that memory peaks, and an out-of-memory
    error shows, at the first step; later batches, and validation, reuse what it allocated."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size = list(lengths), batch_size

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = self._generator()
        order = torch.randperm(self.n, generator=g).tolist()
        size = self.batch_size * _MEGA_BATCHES
        batches = []
        for start in range(0, self.n, size):
            mega = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        batches = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist()]
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
        for batch in batches:
            yield from batch


class FullBatches(_EpochSeeded):
    """A random order whose length is a multiple of the batch size: the last batch is filled up with
    sentences from the start of the epoch, so every batch has the same shape."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        super().__init__(n, seed)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.n // self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self._generator()).tolist()
        missing = len(self) - self.n
        yield from order + (order * (missing // max(self.n, 1) + 1))[:missing]


def train_sampler(batching: str, lengths: Sequence[int], batch_size: int, seed: int) -> Sampler[int] | None:
    """The sampler for a resolved batching strategy (None: the Trainer's own random sampler)."""
    if batching == "length":
        return ShuffledLengthGroups(lengths, batch_size, seed)
    if batching == "static":
        return FullBatches(len(lengths), batch_size, seed)
    return None


# Inference batches hold at most batch_size sentences and this many padded subwords per sentence on
# average: the batch of the longest sentences is smaller, so it does not set the peak memory.
TOKENS_PER_SENTENCE = 48


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Inference batches: sentence indices sorted by length (results go back by index), cut at
    batch_size sentences or batch_size * TOKENS_PER_SENTENCE padded subwords."""
    budget = batch_size * TOKENS_PER_SENTENCE
    batches: list[list[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * lengths[i] > budget:
            batches.append([])
        batches[-1].append(i)
    return [b for b in batches if b]


class PadCollator:
    """Pads a list of tokenized sentences into tensors: input_ids (pad id), attention_mask, labels (-100).

    Plain tensor writes, no tokenizer call per batch: on a GPU running captured graphs, the collator
    must not become the bottleneck."""

    def __init__(self, pad_id: int, multiple: int | None = None, max_length: int | None = None) -> None:
        self.pad_id, self.multiple, self.max_length = pad_id, multiple, max_length

    def width(self, longest: int) -> int:
        """The padded length: the longest sentence, rounded up to the multiple but not past max_length."""
        if not self.multiple:
            return longest
        rounded = -(-longest // self.multiple) * self.multiple
        return max(longest, min(rounded, self.max_length)) if self.max_length else rounded

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        n = len(features)
        width = self.width(max(len(f["input_ids"]) for f in features))
        batch = {
            "input_ids": torch.full((n, width), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((n, width), dtype=torch.long),
        }
        if "labels" in features[0]:
            batch["labels"] = torch.full((n, width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            batch["input_ids"][i, :length] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][i, :length] = 1
            if "labels" in batch:
                batch["labels"][i, :length] = torch.as_tensor(f["labels"])
        return batch
