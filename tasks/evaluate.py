"""evaluate: word-level seqeval scores of the trained model on validation and test.

The headline numbers are word level: each word is scored at its first subword, its tag decoded as
evaluation.decoding says (by default the best valid IOB2 sequence), exactly one prediction per word of
the original sentence. Beside them: the same model with per-word argmax tags (what transformers'
pipeline gives) and the tutorial's subword-level F1, each labelled, so all three can be compared.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.logging import get_run_logger

from nerflow.tasks.analysis.errors import error_classes, schema_scores
from nerflow.tasks.refs import EvaluationRef, ModelRef, RunContext, TokenizedRef
from nerflow.tasks.runtime.caching import JSON_RESULTS, CachedStep, fingerprint, model_identity
from nerflow.tasks.runtime.files import atomic_write_json
from nerflow.tasks.scoring.inference import SplitPredictions, choose_device, predict_tokenized
from nerflow.tasks.scoring.metrics import (
    DECODING_NOTE,
    SUBWORD_NOTE,
    WORD_LEVEL_NOTE,
    per_entity_table,
    seqeval_scores,
    subword_level_sequences,
    type_confusion,
    word_level_sequences,
)
from nerflow.tasks.settings import ComputeSettings, EvaluationSettings

EVAL_SPLITS = ("validation", "test")


def predict_splits(model_dir: str, data, batch_size: int, label_names: list[str]) -> dict[str, SplitPredictions]:
    """Load the saved model once and score every evaluated split."""
    import torch
    from transformers import AutoTokenizer

    from nerflow.tasks.training.batching import pad_multiple, resolve_batching
    from nerflow.tasks.training.pretrained import load_network

    device, bf16, fp16 = choose_device("auto")
    network = load_network(model_dir).to(device).eval()
    options = {
        "pad_id": AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0,
        "pad_multiple": pad_multiple(resolve_batching("auto", device), device),
        "autocast_dtype": torch.bfloat16 if bf16 else torch.float16 if fp16 else None,
    }
    return {name: predict_tokenized(network, data[name], batch_size, label_names, **options) for name in EVAL_SPLITS}


def split_scores(
    predictions: SplitPredictions, split, names: list[str], decoding: str
) -> tuple[dict, dict, float, Any]:
    """(decoded word-level scores, argmax word-level scores, tutorial subword F1, decoded sequences)."""
    word_ids, word_labels = list(split["word_ids"]), list(split["word_labels"])
    decoded = word_level_sequences(predictions.word_scores, word_labels, names, decoding)
    argmax = seqeval_scores(*word_level_sequences(predictions.word_scores, word_labels, names, "argmax"))
    subword = seqeval_scores(*subword_level_sequences(predictions.subword_argmax, word_ids, word_labels, names))["f1"]
    scores = seqeval_scores(*decoded) | {"sentences": len(split)}
    return scores, {k: argmax[k] for k in ("precision", "recall", "f1")}, subword, decoded


def evaluate_model(
    model: ModelRef, tokenized: TokenizedRef, run_dir: Path, batch_size: int = 64, decoding: str = "iob2"
) -> EvaluationRef:
    """Score the saved model on validation and test; write metrics.json into the run folder."""
    data = tokenized.load()
    names = tokenized.label_names
    word_level, argmax, subword_f1, confusion = {}, {}, {}, {}
    for split_name, predictions in predict_splits(model.path, data, batch_size, names).items():
        word_level[split_name], argmax[split_name], subword_f1[split_name], decoded = split_scores(
            predictions, data[split_name], names, decoding
        )
        if split_name == "test":
            confusion = type_confusion(*decoded, names)
            schemas, errors = schema_scores(*decoded), error_classes(*decoded)
    metrics = {
        "word_level": word_level,
        "word_level_note": f"{WORD_LEVEL_NOTE}; {DECODING_NOTE[decoding]}",
        "decoding": decoding,
        "word_level_argmax": argmax,
        "word_level_argmax_note": DECODING_NOTE["argmax"],
        "subword_level_tutorial_f1": subword_f1,
        "subword_level_note": SUBWORD_NOTE,
        "alignment": tokenized.alignment,
        "label_names": names,
        "test_confusion": confusion,
        "test_schemas": schemas,
        "test_schemas_note": "seqeval strict mode; nervaluate's SemEval-2013 schemas",
        "test_error_classes": errors,
    }
    path = atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return EvaluationRef(
        path=str(path),
        decoding=decoding,
        word_level=word_level,
        word_level_argmax=argmax,
        subword_level_tutorial_f1=subword_f1,
        test_confusion=confusion,
        test_schemas=schemas,
        test_error_classes=errors,
    )


def schema_table(ev: EvaluationRef) -> list[dict[str, Any]]:
    """Test scores per matching rule: seqeval's default and strict modes, nervaluate's four schemas."""
    rows = [
        {"rule": "seqeval (default, conlleval)", **{k: round(ev.test[k], 4) for k in ("precision", "recall", "f1")}}
    ]
    rows.append({"rule": "seqeval strict", **ev.test_schemas.get("seqeval_strict", {})})
    rows += [{"rule": f"nervaluate {schema}", **r} for schema, r in ev.test_schemas.get("overall", {}).items()]
    return rows


def error_table(ev: EvaluationRef) -> list[dict[str, Any]]:
    return [{"entity": kind, **counts} for kind, counts in ev.test_error_classes.items()]


def overall_table(ev: EvaluationRef) -> list[dict[str, Any]]:
    return [
        {
            "split": split,
            "precision": round(s["precision"], 4),
            "recall": round(s["recall"], 4),
            "f1": round(s["f1"], 4),
            "accuracy": round(s["accuracy"], 4),
            "entities": s["support"],
            "f1_argmax (pipeline decoding)": round(ev.word_level_argmax[split]["f1"], 4)
            if ev.word_level_argmax
            else None,
            "subword_f1_tutorial (comparison only)": round(ev.subword_level_tutorial_f1[split], 4),
        }
        for split, s in ev.word_level.items()
    ]


def metrics_exist(ref: EvaluationRef) -> bool:
    return Path(ref.path).is_file()


def _evaluate_cache_key(context, inputs: dict[str, Any]) -> str:
    model: ModelRef = inputs["model"]
    # The model by its files' identities (a model linked into another run folder keeps them), not its path.
    return "evaluate-" + fingerprint(
        "nerflow-evaluate-v6",
        model_identity(model.path),
        inputs["tokenized"].cache_key,
        inputs["cfg"].decoding,
    )


def evaluate(
    model: ModelRef, tokenized: TokenizedRef, cfg: EvaluationSettings, compute: ComputeSettings, ctx: RunContext
) -> EvaluationRef:
    """Score the model on every split, word level, decoded as cfg.decoding says; metrics.json in the run folder."""
    return evaluate_model(model, tokenized, Path(ctx.run_dir), compute.eval_batch_size, cfg.decoding)


@task(name="evaluate", cache_policy=CacheKeyFnPolicy(cache_key_fn=_evaluate_cache_key), **JSON_RESULTS)
def evaluate_task(
    model: ModelRef, tokenized: TokenizedRef, cfg: EvaluationSettings, compute: ComputeSettings, ctx: RunContext
) -> EvaluationRef:
    ev = evaluate(model, tokenized, cfg, compute, ctx)
    decoding = cfg.decoding
    test = ev.test
    get_run_logger().info(
        "test (word level, %s decoding): P %.4f R %.4f F1 %.4f accuracy %.4f | argmax decoding F1 %.4f | "
        "tutorial subword-level F1 %.4f (comparison only)",
        decoding,
        test["precision"],
        test["recall"],
        test["f1"],
        test["accuracy"],
        ev.word_level_argmax["test"]["f1"],
        ev.subword_level_tutorial_f1["test"],
    )
    create_table_artifact(key="metrics-overall", table=overall_table(ev), description=WORD_LEVEL_NOTE)
    create_table_artifact(
        key="metrics-per-entity", table=per_entity_table(ev), description="Test split, word level, per entity type"
    )
    create_table_artifact(key="metrics-schemas", table=schema_table(ev), description="Test split, by matching rule")
    create_table_artifact(
        key="error-classes", table=error_table(ev), description="Test entities by kind of error, per entity type"
    )
    return ev


def adopt_metrics(
    evaluation: EvaluationRef, model: ModelRef, tokenized, cfg, compute, ctx: RunContext
) -> EvaluationRef:
    """Metrics a cache hit found in an earlier run's folder, copied into this run's."""
    run_dir = Path(ctx.run_dir)
    if Path(evaluation.path).resolve().parent == run_dir.resolve():
        return evaluation
    shutil.copy2(evaluation.path, run_dir / "metrics.json")
    return evaluation.model_copy(update={"path": str(run_dir / "metrics.json")})


EVALUATE = CachedStep(evaluate_task, metrics_exist, adopt=adopt_metrics)
