"""Step 4, evaluate: word-level seqeval scores of the trained model on validation and test.

The headline numbers are word level: each word's tag is predicted at its first subword, exactly one
prediction per word of the original sentence. The tutorial's subword-level F1 is reported beside them,
labelled as such, only so the two can be compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.caching import fingerprint, model_identity
from tasks.metrics import seqeval_scores, subword_level_sequences, type_confusion, word_level_sequences
from tasks.storage import atomic_write_json
from tasks.tokenize import TokenizedRef, load_tokenized
from tasks.train import ModelRef, choose_device

EVAL_SPLITS = ("validation", "test")
WORD_LEVEL_NOTE = (
    "seqeval (default mode) at word level: one prediction per word, taken at its first subword; words "
    "with no subword in the input (truncated, or yielding no subword) count as predicted O"
)
SUBWORD_NOTE = (
    "for comparison only: the tutorial's score, seqeval over every subword with the word's tag copied "
    "onto each piece (B- repeated); it is not a word-level F1"
)


class EvaluationRef(BaseModel):
    path: str
    word_level: dict[str, dict[str, Any]]
    subword_level_tutorial_f1: dict[str, float]
    test_confusion: dict[str, Any]
    """Word counts by gold and predicted entity type on the test split (B-/I- merged)."""

    @property
    def test(self) -> dict[str, Any]:
        return self.word_level["test"]


def predict_label_ids(model_dir: str, split, batch_size: int) -> list[list[int]]:
    """Predicted label id at every subword position of every sentence, in dataset order."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorWithPadding

    device, bf16, fp16 = choose_device("auto")
    model = AutoModelForTokenClassification.from_pretrained(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = DataCollatorWithPadding(tokenizer)
    inputs = [name for name in tokenizer.model_input_names if name in split.column_names]
    columns = {name: list(split[name]) for name in inputs}
    n = len(split)
    # Length-sorted batches waste less compute on padding; results are put back in dataset order.
    order = sorted(range(n), key=lambda i: len(columns["input_ids"][i]))
    out: list[list[int]] = [[] for _ in range(n)]
    autocast = torch.autocast(device, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=bf16 or fp16)
    with torch.inference_mode(), autocast:
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = collate([{name: columns[name][i] for name in inputs} for i in idx])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            pred = logits.argmax(dim=-1).cpu().tolist()
            for row, i in enumerate(idx):
                out[i] = pred[row][: len(columns["input_ids"][i])]
    return out


def evaluate_model(model: ModelRef, tokenized: TokenizedRef, run_dir: Path, batch_size: int = 64) -> EvaluationRef:
    """Score the saved model on validation and test; write metrics.json into the run folder."""
    data = load_tokenized(tokenized)
    names = tokenized.label_names
    word_level: dict[str, dict[str, Any]] = {}
    subword_f1: dict[str, float] = {}
    confusion: dict[str, Any] = {}
    for split_name in EVAL_SPLITS:
        split = data[split_name]
        predictions = predict_label_ids(model.path, split, batch_size)
        word_ids, word_labels = list(split["word_ids"]), list(split["word_labels"])
        y_true, y_pred = word_level_sequences(predictions, word_ids, word_labels, names)
        word_level[split_name] = seqeval_scores(y_true, y_pred)
        if split_name == "test":
            confusion = type_confusion(y_true, y_pred, names)
        word_level[split_name]["sentences"] = len(split)
        subword_f1[split_name] = seqeval_scores(*subword_level_sequences(predictions, word_ids, word_labels, names))["f1"]
    metrics = {
        "word_level": word_level,
        "word_level_note": WORD_LEVEL_NOTE,
        "subword_level_tutorial_f1": subword_f1,
        "subword_level_note": SUBWORD_NOTE,
        "alignment": tokenized.alignment,
        "label_names": names,
        "test_confusion": confusion,
    }
    path = atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return EvaluationRef(path=str(path), word_level=word_level, subword_level_tutorial_f1=subword_f1, test_confusion=confusion)


def overall_table(ev: EvaluationRef) -> list[dict[str, Any]]:
    return [
        {
            "split": split,
            "precision": round(s["precision"], 4),
            "recall": round(s["recall"], 4),
            "f1": round(s["f1"], 4),
            "accuracy": round(s["accuracy"], 4),
            "entities": s["support"],
            "subword_f1_tutorial (comparison only)": round(ev.subword_level_tutorial_f1[split], 4),
        }
        for split, s in ev.word_level.items()
    ]


def per_entity_table(ev: EvaluationRef, split: str = "test") -> list[dict[str, Any]]:
    return [
        {"entity": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}}
        for name, s in sorted(ev.word_level[split]["per_entity"].items())
    ]


def metrics_exist(ref: EvaluationRef) -> bool:
    return Path(ref.path).is_file()


def _evaluate_cache_key(context, inputs: dict[str, Any]) -> str:
    model: ModelRef = inputs["model"]
    return "evaluate-" + fingerprint(
        "nerflow-evaluate-v3", str(Path(model.path).resolve()), model_identity(model.path), inputs["tokenized"].cache_key
    )


@task(name="evaluate", cache_policy=CacheKeyFnPolicy(cache_key_fn=_evaluate_cache_key), persist_result=True)
def evaluate_task(model: ModelRef, tokenized: TokenizedRef, run_dir: str, batch_size: int = 64) -> EvaluationRef:
    ev = evaluate_model(model, tokenized, Path(run_dir), batch_size)
    test = ev.test
    get_run_logger().info(
        "test (word level): P %.4f R %.4f F1 %.4f accuracy %.4f | tutorial subword-level F1 %.4f (comparison only)",
        test["precision"],
        test["recall"],
        test["f1"],
        test["accuracy"],
        ev.subword_level_tutorial_f1["test"],
    )
    create_table_artifact(key="metrics-overall", table=overall_table(ev), description=WORD_LEVEL_NOTE)
    create_table_artifact(
        key="metrics-per-entity", table=per_entity_table(ev), description="Test split, word level, per entity type"
    )
    return ev
