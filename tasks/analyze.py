"""analyze: the test sentences the model gets most wrong, and (analysis.label_issues: on) the training
sentences whose labels are probably wrong.

`errors.jsonl` in the run folder holds the `analysis.worst_sentences` test sentences of highest loss,
gold and predicted entities side by side with the kind of each error; `label_issues.jsonl` the
training sentences cleanlab flags from out-of-fold predictions (nerflow.tasks.analysis.label_issues),
most suspect first, with the given and the suggested tags. Neither edits the data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from nerflow.tasks.analysis.errors import ERRORS_FILE, sentence_losses, worst_sentences
from nerflow.tasks.analysis.label_issues import ISSUES_FILE, out_of_fold_log_probs, rank_label_issues
from nerflow.tasks.refs import AnalysisRef, DatasetRef, ModelRef, RunContext, TokenizedRef, TrainJob
from nerflow.tasks.runtime.files import atomic_write_text
from nerflow.tasks.scoring.decoding import decode
from nerflow.tasks.scoring.inference import predict_tokenized
from nerflow.tasks.settings import AnalysisSettings


def word_scores(model: ModelRef, split, label_names: list[str], batch_size: int = 64) -> list:
    from nerflow.tasks.training.pretrained import load_network

    network = load_network(model.path).eval()
    return predict_tokenized(network, split, batch_size, label_names).word_scores


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def test_errors(model: ModelRef, dataset: DatasetRef, tokenized: TokenizedRef, n: int, run_dir: Path) -> list[dict]:
    split, names = tokenized.load()["test"], tokenized.label_names
    scores, labels = word_scores(model, split, names), list(split["word_labels"])
    y_true = [[names[t] for t in gold] for gold in labels]
    y_pred = [[names[t] for t in tags] for tags in decode(scores, names, model.decoding)]
    tokens = dataset.load()["test"]["tokens"]
    return worst_sentences(tokens, y_true, y_pred, sentence_losses(scores, labels), n)


def label_issues(
    model: ModelRef, dataset: DatasetRef, tokenized: TokenizedRef, cfg: AnalysisSettings, job: TrainJob, train: Callable
) -> list[dict]:
    """Out-of-fold scores of every training sentence (cfg.folds trainings of the run's recipe), ranked by cleanlab."""
    names = tokenized.label_names

    def score(fold_model, split):
        return word_scores(fold_model, split, names)

    workdir = Path(job.run_dir) / "label-issues"
    log_probs = out_of_fold_log_probs(tokenized, job, cfg.folds, train, score, workdir)
    labels = list(tokenized.load()["train"]["word_labels"])
    suggested = decode(log_probs, names, model.decoding)
    return rank_label_issues(labels, log_probs, dataset.load()["train"]["tokens"], names, suggested)


def analyze(
    model: ModelRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    cfg: AnalysisSettings,
    job: TrainJob,
    ctx: RunContext,
    train: Callable | None = None,
) -> AnalysisRef:
    """Write errors.jsonl and, when asked (with `train`, the train step's function), label_issues.jsonl."""
    run_dir = Path(ctx.run_dir)
    worst = test_errors(model, dataset, tokenized, cfg.worst_sentences, run_dir)
    ref = AnalysisRef(errors_path=_write_jsonl(run_dir / ERRORS_FILE, worst), worst=worst[:20])
    if cfg.label_issues == "on" and train is not None:
        issues = label_issues(model, dataset, tokenized, cfg, job, train)
        ref.label_issues_path = _write_jsonl(run_dir / ISSUES_FILE, issues)
        ref.label_issues, ref.top_issues = len(issues), issues[:50]
        ref.train_sentences = dataset.num_rows["train"]
    return ref


def _entities(found: list[dict]) -> str:
    return ", ".join(f"{e['text']} ({e['entity']})" for e in found) or "(none)"


def worst_table(ref: AnalysisRef) -> list[dict[str, Any]]:
    return [
        {
            "loss": r["loss"],
            "sentence": r["text"],
            "gold": _entities(r["gold"]),
            "predicted": _entities(r["predicted"]),
            "errors": ", ".join(r["errors"]),
        }
        for r in ref.worst
    ]


def issue_table(ref: AnalysisRef) -> list[dict[str, Any]]:
    def words(r, key):
        return " ".join(f"{r['tokens'][w]}/{r[key][w]}" for w in r["words"])

    return [
        {
            "score": r["score"],
            "sentence": " ".join(r["tokens"]),
            "given": words(r, "given"),
            "suggested": words(r, "suggested"),
        }
        for r in ref.top_issues
    ]


@task(name="analyze", cache_policy=NO_CACHE)
def analyze_task(
    model: ModelRef,
    dataset: DatasetRef,
    tokenized: TokenizedRef,
    cfg: AnalysisSettings,
    job: TrainJob,
    ctx: RunContext,
    train: Callable | None = None,
) -> AnalysisRef:
    ref = analyze(model, dataset, tokenized, cfg, job, ctx, train)
    create_table_artifact(key="worst-sentences", table=worst_table(ref), description="Test sentences of highest loss")
    if ref.label_issues_path:
        create_table_artifact(
            key="label-issues",
            table=issue_table(ref),
            description="Training sentences cleanlab flags, most suspect first",
        )
        get_run_logger().info(
            "%d training sentences flagged as likely mislabelled: %s", ref.label_issues, ref.label_issues_path
        )
    return ref
