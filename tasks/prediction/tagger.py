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


BACKENDS = ("auto", "torch", "onnx")


class NerPredictor:
    """A saved model folder, loaded once, that turns documents into entities.

    `backend`: 'torch', 'onnx' (the folder's ONNX export: int8 when the export kept it, else fp32), or
    'auto' (ONNX when the folder has an export, onnxruntime is installed and there is no GPU). Both run
    the same windows and decoding. `onnx_file` picks one ONNX file (benchmarks compare fp32 and int8)."""

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 32,
        stride: int = 32,
        backend: str = "auto",
        onnx_file: str | Path | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from nerflow.tasks.runtime.errors import InputError

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a model folder (no config.json); pass RUN_DIR/model")
        try:
            config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.network, self.autocast_dtype, self.backend = _network(path, backend, onnx_file)
        except InputError:
            raise
        except (OSError, ValueError) as e:  # a broken config.json, missing weights, an unreadable tokenizer
            raise InputError(f"{path}: not a model folder nerflow can load: {str(e).splitlines()[0][:300]}") from e
        self.label_names = [config.id2label[i] for i in range(config.num_labels)]
        self.decoding = getattr(config, "nerflow_decoding", None) or "argmax"
        self.tag_scheme = getattr(config, "nerflow_tag_scheme", None) or "iob2"  # the training data's scheme
        self.max_length = min(self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
        self.batch_size, self.stride = batch_size, stride

    def _windows(self, docs: Sequence[Document]) -> tuple[list[list[str]], list[tuple[int, int, int]]]:
        """Every window's words, and (document, first word, end word) of each."""
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add()
        stride = min(self.stride, budget // 2)
        windows, where = [], []
        # Subwords per word of every document, from one batched call of the fast tokenizer.
        nonempty = [i for i, doc in enumerate(docs) if doc.words]
        encoded = self.tokenizer([docs[i].words for i in nonempty], is_split_into_words=True, add_special_tokens=False)
        for row, i in enumerate(nonempty):
            doc = docs[i]
            pieces = np.bincount([w for w in encoded.word_ids(row) if w is not None], minlength=len(doc.words))
            for start, end in word_windows(np.maximum(pieces, 1).tolist(), budget, stride):
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
            k = np.arange(end - start)
            centrality = np.minimum(k, end - start - 1 - k)
            better = centrality > best[doc][start:end]
            best[doc][start:end][better] = centrality[better]
            scores[doc][start:end][better] = window_scores[better]
        return scores

    def predict_documents(
        self, docs: Sequence[Document], progress: Callable[[int, int], None] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Entities per document: text, type, score, and character offsets (raw text) or word indices
        (`start_word`, `end_word` exclusive; pre-split words)."""
        return self.predict_documents_from_scores(docs, self.word_scores(docs, progress))

    def predict_documents_from_scores(
        self, docs: Sequence[Document], scores: list[np.ndarray], tag_ids: list[list[int]] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Entities from word scores (and their decoded tag ids, when the caller has them already)."""
        out = []
        decoded = tag_ids if tag_ids is not None else self.tag_ids(scores)
        for doc, word_scores, tag_ids in zip(docs, scores, decoded):
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

    def tags(self, tag_ids: list[list[int]], scheme: str) -> list[list[str]]:
        """Each document's word tags from its tag ids, written in `scheme` (nerflow.tasks.data.schemes)."""
        from nerflow.tasks.data.schemes import convert

        return [convert([self.label_names[t] for t in ids], "iob2", scheme) for ids in tag_ids]

    def predict(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of {entity, text, score, start, end}."""
        return self.predict_documents([Document.from_text(t) for t in texts])


def _network(path: Path, backend: str, onnx_file: str | Path | None):
    """(network, autocast dtype, backend used) for the model folder."""
    import torch

    from nerflow.tasks.exporting.onnx import OnnxNetwork
    from nerflow.tasks.exporting.onnx import onnx_file as exported
    from nerflow.tasks.runtime.errors import InputError
    from nerflow.tasks.scoring.inference import choose_device
    from nerflow.tasks.training.pretrained import load_network

    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    found = Path(onnx_file) if onnx_file else exported(path)
    if backend == "onnx" and found is None:
        raise InputError(f"{path}: no complete ONNX export in {path / 'onnx'}; make one with `nerflow export RUN_DIR`")
    if backend == "onnx" or (backend == "auto" and found is not None and _onnx_fits()):
        return OnnxNetwork(found), None, "onnx"
    device, bf16, fp16 = choose_device("auto")
    network = load_network(path).to(device).eval()
    return network, torch.bfloat16 if bf16 else torch.float16 if fp16 else None, "torch"


def _onnx_fits() -> bool:
    """auto picks ONNX on a machine without a GPU, when onnxruntime is installed."""
    import importlib.util

    import torch

    return not torch.cuda.is_available() and importlib.util.find_spec("onnxruntime") is not None
