"""The tutorial's recipe, reproduced as written (for comparison only; nerflow does not use it).

Its alignment copies a word's tag, B- included, onto every continuation subword; its metric is
seqeval over those subword tags, computed from full logits at the end of every epoch; its Trainer uses
random batches, the non-fused AdamW, evaluation batch 16 and a checkpoint every 500 steps.
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


def training_arguments(output_dir: str, epochs: int, learning_rate: float = 2e-5, batch_size: int = 16, use_cpu: bool = True):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        eval_strategy="epoch",
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        weight_decay=0.01,
        optim="adamw_torch",
        report_to="none",
        use_cpu=use_cpu,
        disable_tqdm=True,
        seed=42,
    )
