"""Entities a trained model finds in documents of any length, decoded exactly as the model was evaluated.

A document is raw text (split into words at whitespace, punctuation at either end of a chunk split off,
as WikiANN and CoNLL data are, keeping character offsets) or a list of words given already. Each word is
scored at its first subword. A document longer than the model's window is cut into windows of whole
words that overlap by `stride` subwords; each word keeps the scores of the window where it sits
furthest from an edge (the most context on both sides). The word tags of the whole document are then
decoded at once, as the model's config says (`nerflow_decoding`, written at training), so an entity
that crosses a window edge is one entity, never two. Consecutive B-X/I-X words become one entity.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nerflow.tasks.scoring.decoding import decode

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


@dataclass
class Document:
    """Words to tag; `text` and character `offsets` when they came from raw text."""

    words: list[str]
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None

    @classmethod
    def from_text(cls, text: str) -> Document:
        words = split_words(text)
        return cls([w for w, _, _ in words], text, [(s, e) for _, s, e in words])


def word_windows(pieces: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) word ranges covering every word, each of at most `budget` subwords (a word longer
    than that alone), consecutive ranges overlapping by about `stride` subwords."""
    windows, start, n = [], 0, len(pieces)
    while start < n:
        end, used = start, 0
        while end < n and (used + pieces[end] <= budget or end == start):
            used += pieces[end]
            end += 1
        windows.append((start, end))
        if end == n:
            break
        back, overlap = end, 0
        # Overlap by up to `stride` subwords, but leave room for the next word: every window reaches further.
        while back - 1 > start and overlap + pieces[back - 1] <= min(stride, budget - pieces[end]):
            back -= 1
            overlap += pieces[back]
        start = back
    return windows


class NerPredictor:
    """A saved model folder, loaded once, that turns documents into entities."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32, stride: int = 32) -> None:
        import torch
        from transformers import AutoTokenizer

        from nerflow.tasks.runtime.errors import InputError
        from nerflow.tasks.scoring.inference import choose_device
        from nerflow.tasks.training.pretrained import load_network

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a model folder (no config.json); pass RUN_DIR/model")
        device, bf16, fp16 = choose_device("auto")
        try:
            self.network = load_network(path).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:  # a broken config.json, missing weights, an unreadable tokenizer
            raise InputError(f"{path}: not a model folder nerflow can load: {str(e).splitlines()[0][:300]}") from e
        config = self.network.config
        self.label_names = [config.id2label[i] for i in range(config.num_labels)]
        self.decoding = getattr(config, "nerflow_decoding", None) or "argmax"
        self.tag_scheme = getattr(config, "nerflow_tag_scheme", None) or "iob2"  # the training data's scheme
        self.max_length = min(self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
        self.batch_size, self.stride = batch_size, stride
        self.autocast_dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else None

    def _windows(self, docs: Sequence[Document]) -> tuple[list[list[str]], list[tuple[int, int, int]]]:
        """Every window's words, and (document, first word, end word) of each."""
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add()
        stride = min(self.stride, budget // 2)
        windows, where = [], []
        for i, doc in enumerate(docs):
            if not doc.words:
                continue
            pieces = [max(1, len(ids)) for ids in self.tokenizer(doc.words, add_special_tokens=False)["input_ids"]]
            for start, end in word_windows(pieces, budget, stride):
                windows.append(doc.words[start:end])
                where.append((i, start, end))
        return windows, where

    def word_scores(
        self, docs: Sequence[Document], progress: Callable[[int, int], None] | None = None
    ) -> list[np.ndarray]:
        """Per document, (words, labels) log-probabilities; each word from its most central window."""
        from nerflow.tasks.scoring.inference import predict_split

        windows, where = self._windows(docs)
        encoded = (
            self.tokenizer(windows, is_split_into_words=True, truncation=True, max_length=self.max_length)
            if windows
            else None
        )
        scores = [np.zeros((len(d.words), len(self.label_names)), dtype=np.float32) for d in docs]
        best = [np.full(len(d.words), -1.0) for d in docs]
        if encoded is None:
            return scores
        per_window = predict_split(
            self.network,
            encoded["input_ids"],
            [encoded.word_ids(j) for j in range(len(windows))],
            [len(w) for w in windows],
            self.batch_size,
            pad_id=self.tokenizer.pad_token_id or 0,
            autocast_dtype=self.autocast_dtype,
            outside_id=self.label_names.index("O"),
            progress=progress,
        ).word_scores
        for (doc, start, end), window_scores in zip(where, per_window):
            for k in range(end - start):
                centrality = min(k, end - start - 1 - k)
                if centrality > best[doc][start + k]:
                    best[doc][start + k], scores[doc][start + k] = centrality, window_scores[k]
        return scores

    def predict_documents(
        self, docs: Sequence[Document], progress: Callable[[int, int], None] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Entities per document: text, type, score, and character offsets (raw text) or word indices
        (`start_word`, `end_word` exclusive; pre-split words)."""
        return self.predict_documents_from_scores(docs, self.word_scores(docs, progress))

    def predict_documents_from_scores(
        self, docs: Sequence[Document], scores: list[np.ndarray]
    ) -> list[list[dict[str, Any]]]:
        out = []
        for doc, word_scores, tag_ids in zip(docs, scores, decode(scores, self.label_names, self.decoding)):
            probs = [float(np.exp(word_scores[w, t])) for w, t in enumerate(tag_ids)]
            entities = []
            for kind, first, last, score in entity_spans([self.label_names[t] for t in tag_ids], probs):
                entity = {"entity": kind, "score": round(score, 4)}
                if doc.offsets is not None:
                    start, end = doc.offsets[first][0], doc.offsets[last - 1][1]
                    entity |= {"text": doc.text[start:end], "start": start, "end": end}
                else:
                    entity |= {"text": " ".join(doc.words[first:last]), "start_word": first, "end_word": last}
                entities.append(entity)
            out.append(entities)
        return out

    def tag_ids(self, scores: list[np.ndarray]) -> list[list[int]]:
        """Each document's word tag ids, decoded as the model was evaluated."""
        return decode(scores, self.label_names, self.decoding)

    def tags(self, scores: list[np.ndarray], scheme: str) -> list[list[str]]:
        """Each document's word tags, written in `scheme` (nerflow.tasks.data.schemes)."""
        from nerflow.tasks.data.schemes import convert

        return [convert([self.label_names[t] for t in ids], "iob2", scheme) for ids in self.tag_ids(scores)]

    def predict(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of {entity, text, score, start, end}."""
        return self.predict_documents([Document.from_text(t) for t in texts])
