"""Pictures for the model card and the flow run: training curves and the entity confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRAINING_CURVES = "training_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"


def _figure(**options):
    # matplotlib's Figure alone, without pyplot: no global figure registry to close, no interactive
    # backend chosen, and about 0.4 CPU seconds less to import. Imported on first use: a cached
    # re-run draws nothing.
    from matplotlib.figure import Figure

    return Figure(**options)


def _save(fig, path: Path) -> Path:
    # A new file renamed into place: never rewrite an existing file (it may be hard-linked from an
    # earlier run's model folder).
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)  # PNG through matplotlib's Agg canvas
    os.replace(tmp, path)
    return path


def training_curves_png(log_history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training loss per logging step, validation loss and word-level F1 per epoch."""
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e and "epoch" in e]
    evals = [(e["epoch"], e.get("eval_loss"), e["eval_f1"]) for e in log_history if "eval_f1" in e]
    fig = _figure(figsize=(10, 3.6))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    if train:
        ax_loss.plot(*zip(*train), label="training loss", color="tab:blue")
    if evals:
        ax_loss.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss", color="tab:orange")
        ax_f1.plot([e[0] for e in evals], [e[2] for e in evals], "o-", color="tab:green")
        for x, _, y in evals:
            ax_f1.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_f1.set(xlabel="epoch", ylabel="F1", title="Validation F1 (word level)", ylim=(0, 1))
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion_png(labels: Sequence[str], matrix: Sequence[Sequence[int]], path: Path, title: str) -> Path:
    """Rows: gold entity type of each word; columns: predicted type; cells: word counts (row-normalised colour)."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=9,
            )
    return _save(fig, path)
