"""Batch samplers and padding: what each strategy promises about epochs, order, shapes and mixing."""

import random

import pytest
import torch

from nerflow.tasks.training.batching import (
    STATIC_BUCKET,
    TOKENS_PER_SENTENCE,
    FullBatches,
    PadCollator,
    ShuffledLengthGroups,
    length_sorted_batches,
    pad_multiple,
    resolve_batching,
    train_sampler,
)

# 400 sentences: 46% of 3-6 subwords (bare names), the rest 7-60, as in the short-sentence regime.
rng = random.Random(0)
LENGTHS = [rng.randint(3, 6) if rng.random() < 0.46 else rng.randint(7, 60) for _ in range(400)]


def batches(sampler, size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_length_groups_visit_every_sentence_once_per_epoch_and_change_with_the_epoch():
    sampler = ShuffledLengthGroups(LENGTHS, batch_size=16, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS)))
    assert list(ShuffledLengthGroups(LENGTHS, 16, 7)) == first  # deterministic: resume can skip batches
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_length_groups_pad_little_but_do_not_run_from_long_to_short():
    sampler = ShuffledLengthGroups(LENGTHS, batch_size=16, seed=7)
    grouped = batches(sampler, 16)
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in grouped)
    random_padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches(torch.randperm(400).tolist(), 16))
    assert padded < 0.75 * random_padded
    # transformers' group_by_length emits a mega-batch's batches from longest to shortest; shuffled
    # batch order leaves no such run: the batch maxima are far from monotonic.
    maxima = [max(LENGTHS[i] for i in b) for b in grouped]
    descents = sum(a > b for a, b in zip(maxima, maxima[1:]))
    assert 0.25 < descents / (len(maxima) - 1) < 0.75
    assert maxima[0] == max(LENGTHS)  # except that the longest batch comes first: memory peaks at step 1


def test_full_batches_are_random_and_all_the_same_size():
    sampler = FullBatches(len(LENGTHS), batch_size=16, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 400  # 400 = 25 x 16
    odd = list(FullBatches(410, batch_size=16, seed=3))
    assert len(odd) == 416 and set(odd) == set(range(410))  # the last batch is topped up from the start
    # Random composition: short names and long sentences share batches.
    mixed = [b for b in batches(sampler, 16) if min(LENGTHS[i] for i in b) <= 6 and max(LENGTHS[i] for i in b) >= 20]
    assert len(mixed) >= 20


def test_static_padding_uses_few_shapes_and_the_collator_masks_padding():
    collate = PadCollator(pad_id=0, multiple=STATIC_BUCKET, max_length=128)
    widths = {collate.width(n) for n in range(1, 129)}
    assert widths == {32, 64, 96, 128}
    batch = collate(
        [
            {"input_ids": [101, 5, 102], "labels": [-100, 3, -100]},
            {"input_ids": [101, 7, 8, 9, 102], "labels": [-100, 1, 2, 0, -100]},
        ]
    )
    assert batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"][0].tolist()[:4] == [1, 1, 1, 0] and int(batch["attention_mask"].sum()) == 8
    assert batch["labels"][0, 3:].eq(-100).all() and batch["labels"][1, :5].tolist() == [-100, 1, 2, 0, -100]
    assert PadCollator(0, None)([{"input_ids": [1, 2, 3]}])["input_ids"].shape == (1, 3)


@pytest.mark.parametrize("device, expected", [("cuda", "static"), ("cpu", "length")])
def test_auto_batching_depends_on_the_device(device, expected):
    assert resolve_batching("auto", device) == expected
    assert resolve_batching("random", device) == "random"
    assert pad_multiple("static", device) == STATIC_BUCKET
    assert train_sampler("random", LENGTHS, 16, 0) is None  # the Trainer's own random sampler


def test_inference_batches_cover_every_sentence_in_length_order_within_a_token_budget():
    got = length_sorted_batches(LENGTHS, 64)
    flat = [i for b in got for i in b]
    assert sorted(flat) == list(range(400)) and [LENGTHS[i] for i in flat] == sorted(LENGTHS)
    assert len(got[0]) == 64  # short sentences: full batches
    assert all(len(b) * max(LENGTHS[i] for i in b) <= 64 * TOKENS_PER_SENTENCE for b in got)
    assert len(got[-1]) < 64  # the longest sentences come in smaller batches
