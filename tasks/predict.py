"""Entities a trained model finds in raw text, decoded exactly as the model was evaluated.

Text is split into words (whitespace, with punctuation at either end of a chunk split off, as WikiANN
and CoNLL data are), each word is scored at its first subword, the word tags are decoded as the model's
config says (`nerflow_decoding`, written at training: by default the best valid IOB2 sequence) and
consecutive B-X/I-X words become one entity with character offsets into the original text. The
transformers pipeline would pick each word's argmax instead, so its entities could differ from the ones
the model was scored on.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from tasks.decoding import decode

Word = tuple[str, int, int]  # text, start, end (character offsets)


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def split_words(text: str) -> list[Word]:
    """Whitespace-separated chunks, with leading and trailing punctuation as words of their own."""
    words: list[Word] = []
    pos = 0
    for chunk in text.split():
        start = text.index(chunk, pos)
        end = start + len(chunk)
        pos = end
        lead = start
        while lead < end and _is_punctuation(text[lead]):
            words.append((text[lead], lead, lead + 1))
            lead += 1
        trail = end
        while trail > lead and _is_punctuation(text[trail - 1]):
            trail -= 1
        if trail > lead:
            words.append((text[lead:trail], lead, trail))
        words.extend((text[i], i, i + 1) for i in range(trail, end))
    return words


def entity_spans(tags: list[str], word_probs: list[float]) -> list[tuple[str, int, int, float]]:
    """(type, first word, last word + 1, mean probability) of each entity; an I-X that does not continue
    an X span opens one, as seqeval counts it."""
    spans: list[tuple[str, int, int, float]] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            spans.append((kind, start, i, float(np.mean(word_probs[start:i]))))
            start, kind = None, None
        if tag != "O" and not continues:
            start, kind = i, tag[2:]
    return spans


class NerPredictor:
    """A saved model folder, loaded once, that turns texts into entities."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        from tasks.inference import choose_device

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model folder (no config.json); pass RUN_DIR/model")
        device, bf16, fp16 = choose_device("auto")
        self.model = AutoModelForTokenClassification.from_pretrained(path).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = self.model.config
        self.label_names = [config.id2label[i] for i in range(config.num_labels)]
        self.decoding = getattr(config, "nerflow_decoding", None) or "argmax"
        self.max_length = min(self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
        self.batch_size = batch_size
        self.autocast_dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else None

    def predict(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of {entity, text, score, start, end}."""
        from tasks.inference import predict_split

        words = [split_words(text) for text in texts]
        nonempty = [i for i, w in enumerate(words) if w]
        encoded = self.tokenizer(
            [[w[0] for w in words[i]] for i in nonempty], is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        scores = predict_split(
            self.model,
            encoded["input_ids"],
            [encoded.word_ids(j) for j in range(len(nonempty))],
            [len(words[i]) for i in nonempty],
            self.batch_size,
            pad_id=self.tokenizer.pad_token_id or 0,
            autocast_dtype=self.autocast_dtype,
            outside_id=self.label_names.index("O"),
        ).word_scores
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        for i, word_scores, tag_ids in zip(nonempty, scores, decode(scores, self.label_names, self.decoding)):
            probs = [float(np.exp(word_scores[w, t])) for w, t in enumerate(tag_ids)]
            for kind, first, last, score in entity_spans([self.label_names[t] for t in tag_ids], probs):
                start, end = words[i][first][1], words[i][last - 1][2]
                out[i].append({"entity": kind, "text": texts[i][start:end], "score": round(score, 4), "start": start, "end": end})
        return out
