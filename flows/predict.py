"""Entities a trained model finds in text: the token-classification pipeline with aggregation.

Aggregation is "first": a word takes the label predicted at its first subword, the same rule the
model was trained and scored with (continuation subwords carry no trained label under `first`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_ner_pipeline(model_dir: str | Path):
    from transformers import pipeline

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json); pass RUN_DIR/model")
    return pipeline("token-classification", model=str(path), aggregation_strategy="first", device=-1)


def predict_entities(ner, texts: list[str]) -> list[list[dict[str, Any]]]:
    """One list per text of {entity, text, score, start, end}."""
    out = []
    for text in texts:
        entities = ner(text) if text.strip() else []
        out.append(
            [
                {
                    "entity": e["entity_group"],
                    "text": text[e["start"] : e["end"]],
                    "score": round(float(e["score"]), 4),
                    "start": int(e["start"]),
                    "end": int(e["end"]),
                }
                for e in entities
            ]
        )
    return out
