"""The recipes nerflow is measured against (for comparison only; nerflow does not use them).

- The tutorial, as written: its alignment copies a word's tag, B- included, onto every continuation
  subword; its metric is seqeval over those subword tags, computed from full logits at the end of every
  epoch; its Trainer uses random batches, the non-fused AdamW, evaluation batch 16, no warm-up and a
  checkpoint every 500 steps.
- A plain Trainer script in the manner of transformers' `run_ner.py`: first-subword labels
  (`label_all_tokens=False`), random batches, the Trainer's default optimizer, 10% linear warm-up;
  the model after the last epoch, each word tagged with its argmax label.
"""

from __future__ import annotations

import numpy as np
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score


def tokenize_and_align_labels(examples, tokenizer, label_all_tokens: bool = True):
    tokenized_inputs = tokenizer(list(examples["tokens"]), truncation=True, is_split_into_words=True)
    labels = []
    for i, label in enumerate(examples["ner_tags"]):
        word_ids = tokenized_inputs.word_ids(batch_index=i)
        previous_word_idx = None
        label_ids = []
        for word_idx in word_ids:
            if word_idx is None:
                label_ids.append(-100)
            elif word_idx != previous_word_idx:
                label_ids.append(label[word_idx])
            else:
                label_ids.append(label[word_idx] if label_all_tokens else -100)
            previous_word_idx = word_idx
        labels.append(label_ids)
    tokenized_inputs["labels"] = labels
    return tokenized_inputs


def make_compute_metrics(label_list):
    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [
            [label_list[p] for (p, l) in zip(prediction, label) if l != -100]
            for prediction, label in zip(predictions, labels)
        ]
        true_labels = [
            [label_list[l] for (p, l) in zip(prediction, label) if l != -100]
            for prediction, label in zip(predictions, labels)
        ]
        return {
            "precision": precision_score(true_labels, true_predictions),
            "recall": recall_score(true_labels, true_predictions),
            "f1": f1_score(true_labels, true_predictions),
            "accuracy": accuracy_score(true_labels, true_predictions),
        }

    return compute_metrics


def training_arguments(
    output_dir: str,
    epochs: int,
    learning_rate: float = 2e-5,
    batch_size: int = 16,
    use_cpu: bool = True,
    seed: int = 42,
    plain: bool = False,
):
    """The tutorial's TrainingArguments; plain=True: run_ner.py's (default optimizer, 10% warm-up)."""
    from transformers import TrainingArguments

    recipe = {"warmup_steps": 0.1} if plain else {"optim": "adamw_torch"}
    return TrainingArguments(
        output_dir=output_dir,
        eval_strategy="epoch",
        save_strategy="no" if plain else "steps",
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        weight_decay=0.01,
        report_to="none",
        use_cpu=use_cpu,
        disable_tqdm=True,
        seed=seed,
        **recipe,
    )


def fine_tune(
    folder, out, epochs: int, learning_rate: float, seed: int = 42, plain: bool = False, batch_size: int = 16
) -> dict:
    """Fine-tune the packaged MiniLM on folder's train split the recipe's way, scoring validation each
    epoch the recipe's way; save the final model to out/model. Returns times and per-epoch F1."""
    import time
    from pathlib import Path

    import datasets
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer

    from bench.common import LABELS, MINILM
    from nerflow.tasks.training.pretrained import resolve_model_folder

    path = resolve_model_folder(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    raw = datasets.load_dataset(
        "json", data_files={s: str(Path(folder) / f"{s}.jsonl") for s in ("train", "validation")}
    )
    tokenized = raw.map(
        lambda ex: tokenize_and_align_labels(ex, tokenizer, label_all_tokens=not plain),
        batched=True,
        remove_columns=["tokens", "ner_tags"],
    )
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    trainer = Trainer(
        model=model,
        args=training_arguments(
            str(Path(out) / "checkpoints"), epochs, learning_rate, batch_size, seed=seed, plain=plain
        ),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=make_compute_metrics(LABELS),
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    trainer.save_model(str(Path(out) / "model"))
    val_f1 = [round(e["eval_f1"], 4) for e in trainer.state.log_history if "eval_f1" in e]
    return {
        "train_wall_s": wall,
        "sentences": len(tokenized["train"]),
        "val_f1": val_f1,
        "model_dir": str(Path(out) / "model"),
    }
