"""Does the label-issue finder find label errors? Errors injected into WikiANN-en, then looked for.

The first N training sentences of WikiANN-en get known errors in `--rate` of their entity spans, one of
three kinds at random: the type swapped for another, a boundary shifted by one word (the span grows
into an O word or loses its last word), or the span dropped (its words tagged O). Two finders rank the
training sentences, and each is scored on the top K (K = sentences with an injected error): the share
of those K that hold an injected error (precision) and the share of the injected sentences among them
(recall), with the wall time:

- `cleanlab, k-fold`: nerflow's finder (analysis.label_issues: on): out-of-fold predictions from
  `--folds` trainings of the recipe, cleanlab's token-classification label quality;
- `highest training loss`: one model trained on all (noisy) sentences, sentences ranked by their own
  mean loss under it, the usual quick look.

WikiANN is silver data with errors of its own: a sentence the finders flag without an injected error is
counted against their precision here, though it may be a real error. The JSON lists the first such
sentences of the finder's ranking (`uninjected_in_top_k`, with their tags) for a person to judge.

    python -m bench.label_issues --train-size 2000 --folds 3 --epochs 2 --json bench/results/label_issues.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import LABELS, MINILM, data_dir, report, subset


def spans_of(tags: list[str]) -> list[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return get_entities(tags)


def inject(tags: list[str], span: tuple[str, int, int], kind: str, types: list[str], rng: random.Random) -> list[str]:
    """The sentence's tags with one error of `kind` in `span` (type, first, last word)."""
    entity, first, last = span
    out = list(tags)
    if kind == "type":
        other = rng.choice([t for t in types if t != entity])
        out[first : last + 1] = [f"B-{other}"] + [f"I-{other}"] * (last - first)
    elif kind == "drop":
        out[first : last + 1] = ["O"] * (last - first + 1)
    elif last + 1 < len(out) and out[last + 1] == "O":  # boundary: grow into the next O word
        out[last + 1] = f"I-{entity}"
    elif last > first:  # or lose the last word
        out[last] = "O"
    else:
        out[first : last + 1] = ["O"]
    return out


def noisy_copy(clean: Path, folder: Path, rate: float, seed: int) -> tuple[Path, set[int], dict[str, int]]:
    """A copy whose training split has errors in `rate` of its spans; (folder, broken sentences, kinds)."""
    import shutil

    shutil.copytree(clean, folder)
    rng = random.Random(seed)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    spans = [(i, s) for i, row in enumerate(rows) for s in spans_of([LABELS[t] for t in row["ner_tags"]])]
    types = sorted({s[0] for _, s in spans})
    broken, kinds = set(), {"type": 0, "boundary": 0, "drop": 0}
    for i, span in rng.sample(spans, round(rate * len(spans))):
        if i in broken:
            continue  # one error per sentence: a sentence is found or not
        kind = rng.choice(sorted(kinds))
        tags = inject([LABELS[t] for t in rows[i]["ner_tags"]], span, kind, types, rng)
        rows[i]["ner_tags"] = [LABELS.index(t) for t in tags]
        broken.add(i)
        kinds[kind] += 1
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return folder, broken, kinds


def scored(ranked: list[int], broken: set[int]) -> dict[str, float]:
    top = set(ranked[: len(broken)])
    hit = len(top & broken)
    return {"precision_at_k": round(hit / max(len(top), 1), 4), "recall_at_k": round(hit / len(broken), 4)}


def run(args, work: Path) -> tuple[list[dict], dict]:
    import numpy as np

    from nerflow.flows.pipeline import PLAIN, run_steps, train_job
    from nerflow.tasks.analysis.errors import sentence_losses
    from nerflow.tasks.analyze import analyze, word_scores
    from nerflow.tasks.refs import RunContext
    from nerflow.tasks.settings import AnalysisSettings, RunSettings
    from nerflow.tasks.train import train_model

    clean = subset(data_dir(args.data), work / "data", {"train": args.train_size, "validation": 500, "test": 500})
    folder, broken, kinds = noisy_copy(clean, work / "noisy", args.rate, args.seed)
    settings = RunSettings.model_validate(
        {
            "dataset": {"source": str(folder)},
            "base_model": {"name": MINILM},
            "train": {"epochs": args.epochs, "learning_rate": 1e-4, "batch_size": 16, "seed": args.seed},
            "output_dir": str(work / "runs"),
        }
    )
    ctx = RunContext.for_run(settings, "noisy")
    started = time.perf_counter()
    out = run_steps(settings, ctx, PLAIN, until="train")
    split = out.tokenized.load()["train"]
    losses = sentence_losses(word_scores(out.model, split, out.tokenized.label_names), list(split["word_labels"]))
    loss_s = time.perf_counter() - started

    started = time.perf_counter()
    job = train_job(settings, out, ctx)
    cfg = AnalysisSettings(label_issues="on", folds=args.folds, worst_sentences=10)
    analyze(out.model, out.dataset, out.tokenized, cfg, job, ctx, train_model)
    finder_s = time.perf_counter() - started
    issues = [json.loads(line) for line in (Path(ctx.run_dir) / "label_issues.jsonl").read_text().splitlines()]
    rankings = {
        f"cleanlab, {args.folds}-fold": ([r["sentence"] for r in issues], finder_s, len(issues)),
        "highest training loss": ([int(i) for i in np.argsort(-losses)], loss_s, None),
    }
    rows = [
        {"finder": name, **scored(ranked, broken), "flagged": flagged, "wall_s": round(seconds, 1)}
        for name, (ranked, seconds, flagged) in rankings.items()
    ]
    by_kind = {
        kind: round(len({r["sentence"] for r in issues[: len(broken)]} & sentences) / max(len(sentences), 1), 4)
        for kind, sentences in _broken_by_kind(folder, clean, broken).items()
    }
    finder, baseline = rows
    tags = _train_tags(folder)
    uninjected = [r for r in issues[: len(broken)] if r["sentence"] not in broken][:25]
    summary = {
        "train_sentences": args.train_size,
        "injected_sentences": len(broken),
        "injected_by_kind": kinds,
        "folds": args.folds,
        "epochs": args.epochs,
        "seed": args.seed,
        "finder_precision_at_k": finder["precision_at_k"],
        "finder_recall_at_k": finder["recall_at_k"],
        "finder_recall_at_k_by_kind": by_kind,
        "loss_baseline_precision_at_k": baseline["precision_at_k"],
        "loss_baseline_recall_at_k": baseline["recall_at_k"],
        "finder_wall_s": finder["wall_s"],
        "uninjected_in_top_k": [_tagged(r["tokens"], tags[r["sentence"]]) for r in uninjected],
        "target": {
            "finder_recall_at_k": ">= 0.5",
            "finder_precision_at_k": ">= 0.5",
            "ahead of the loss baseline": True,
        },
    }
    return rows, summary


def _tagged(tokens: list[str], tags: list[int]) -> str:
    """'Ann/B-PER Lee/I-PER visited Paris/B-LOC': the sentence with its given tags (O words bare)."""
    return " ".join(word if t == 0 else f"{word}/{LABELS[t]}" for word, t in zip(tokens, tags))


def _train_tags(folder: Path) -> list[list[int]]:
    return [json.loads(x)["ner_tags"] for x in (folder / "train.jsonl").read_text().splitlines()]


def _broken_by_kind(noisy: Path, clean: Path, broken: set[int]) -> dict[str, set[int]]:
    """Which broken sentences got which kind of error (read back from the two files)."""
    a, b = _train_tags(clean), _train_tags(noisy)
    kinds: dict[str, set[int]] = {"type": set(), "boundary": set(), "drop": set()}
    for i in broken:
        before, after = spans_of([LABELS[t] for t in a[i]]), spans_of([LABELS[t] for t in b[i]])
        if len(after) < len(before):
            kinds["drop"].add(i)
        elif {(s, e) for _, s, e in before} == {(s, e) for _, s, e in after}:
            kinds["type"].add(i)
        else:
            kinds["boundary"].add(i)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="WikiANN-en folder (default ../shared/data/wikiann_en)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.05, help="share of entity spans given an error")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="bench/results/label_issues.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows, summary = run(args, Path(tmp))
    title = f"Label issues: {summary['injected_sentences']} injected errors in {args.train_size} WikiANN-en training sentences"
    report(title, rows, summary, args.json)


if __name__ == "__main__":
    main()
