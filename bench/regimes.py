"""Data regimes built from WikiANN-en, so that a default is judged on more than one kind of data.

- `2k`, `5k`, `20k`: the first N training sentences (English WikiANN lengths: median 6 words, 9.5% of
  sentences with 3 words or fewer), the first 1,000 validation sentences, the full 10,000-sentence test split.
- `short`: each split resampled to a short-sentence length distribution (46% of sentences with 3 words
  or fewer, median 4 words), the shape of the held-out data on which length-grouped batches lost 9 F1
  points. WikiANN's 1-3 word sentences are bare entity names (99.8% of their words are entities), so
  this regime rewards a batch sampler that mixes them with running text.
- `long`: only sentences of 10 words or more (a quarter of WikiANN-en): running text, few bare names.

Rows are drawn without replacement and without crossing splits, with a fixed seed: the same regime
is the same data in every run. Train/validation/test sizes are printed in each benchmark's table.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from bench.common import LABELS

SHORT_MAX_WORDS = 3
SHORT_SHARE = 0.46
LONG_MIN_WORDS = 10
SEED = 20261127

Rows = list[dict]


def read_split(src: Path, split: str) -> Rows:
    with (src / f"{split}.jsonl").open(encoding="utf-8") as fh:
        return [{"tokens": r["tokens"], "ner_tags": r["ner_tags"]} for r in map(json.loads, fh)]


def first(n: int | None) -> Callable[[Rows, random.Random], Rows]:
    return lambda rows, rng: rows[:n]


def short_mix(n: int) -> Callable[[Rows, random.Random], Rows]:
    """46% of the rows from sentences of at most 3 words, the rest from longer ones, shuffled."""

    def pick(rows: Rows, rng: random.Random) -> Rows:
        short = [r for r in rows if len(r["tokens"]) <= SHORT_MAX_WORDS]
        longer = [r for r in rows if len(r["tokens"]) > SHORT_MAX_WORDS]
        n_short = round(n * SHORT_SHARE)
        if n_short > len(short):
            raise SystemExit(
                f"short regime: {n_short} sentences of <= {SHORT_MAX_WORDS} words wanted, {len(short)} available"
            )
        chosen = rng.sample(short, n_short) + rng.sample(longer, n - n_short)
        rng.shuffle(chosen)
        return chosen

    return pick


def long_only(n: int) -> Callable[[Rows, random.Random], Rows]:
    def pick(rows: Rows, rng: random.Random) -> Rows:
        return [r for r in rows if len(r["tokens"]) >= LONG_MIN_WORDS][:n]

    return pick


# name -> (train, validation, test) row pickers. The short regime's size is bounded by WikiANN-en's
# 1,907 training sentences of <= 3 words (46% of 4,000 = 1,840).
REGIMES: dict[str, tuple] = {
    "2k": (first(2000), first(1000), first(None)),
    "5k": (first(5000), first(1000), first(None)),
    "20k": (first(20000), first(1000), first(None)),
    "short": (short_mix(4000), short_mix(1000), short_mix(2000)),
    "long": (long_only(4000), long_only(1000), long_only(2000)),
}


def build_regime(name: str, src: Path, dest: Path) -> Path:
    """Write the regime's train/validation/test jsonl files and labels.txt into dest; return dest."""
    pickers = REGIMES[name]
    dest.mkdir(parents=True, exist_ok=True)
    for split, pick in zip(("train", "validation", "test"), pickers):
        rows = pick(read_split(src, split), random.Random(f"{SEED}-{name}-{split}"))
        with (dest / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (dest / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return dest


def describe(folder: Path) -> dict[str, float]:
    """Sentences, median words and share of sentences with <= 3 words, per split."""
    out: dict[str, float] = {}
    for split in ("train", "validation", "test"):
        lengths = sorted(len(r["tokens"]) for r in read_split(folder, split))
        out[f"{split}_sentences"] = len(lengths)
        out[f"{split}_median_words"] = lengths[len(lengths) // 2]
        out[f"{split}_short_share"] = round(sum(n <= SHORT_MAX_WORDS for n in lengths) / len(lengths), 3)
    return out
