"""BERT is one family of several: byte-level BPE (RoBERTa), SentencePiece (XLM-R, DeBERTa-v2) checkpoints
train, score and predict per word; a checkpoint that already is an NER model keeps what its head knows."""

import numpy as np
import pytest
import torch

from conftest import (
    build_tiny_roberta,
    build_tiny_sentencepiece,
    prepare,
    tiny_run_settings,
    train,
    write_synthetic_dataset,
)
from nerflow.tasks.evaluate import evaluate_model
from nerflow.tasks.prediction.tagger import NerPredictor
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.settings import BaseModelSettings
from nerflow.tasks.train import pretrained_network

BUILDERS = {
    "roberta": build_tiny_roberta,
    "xlm-roberta": lambda folder: build_tiny_sentencepiece(folder, "xlm-roberta"),
    "deberta-v2": lambda folder: build_tiny_sentencepiece(folder, "deberta-v2"),
}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_family_trains_scores_and_predicts_per_word(family, tmp_path):
    checkpoint = BUILDERS[family](tmp_path / family)
    data = write_synthetic_dataset(tmp_path / "synthetic")
    settings = tiny_run_settings(
        checkpoint,
        tmp_path / "runs",
        dataset={"source": str(data), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 6, "learning_rate": 5e-3, "batch_size": 8},
    )
    dataset, tokenized = prepare(settings)
    # Every word starts a subword of its own and carries its tag there: no word lost to the tokenizer.
    first = tokenized.load()["train"][0]
    starts = [
        pos
        for pos, w in enumerate(first["word_ids"])
        if w is not None and (pos == 0 or first["word_ids"][pos - 1] != w)
    ]
    assert [first["labels"][p] for p in starts] == first["word_labels"] and len(starts) == len(first["word_labels"])
    assert tokenized.stats["train"]["words_without_subword"] == 0
    model = train(settings, tokenized, tmp_path / "runs" / family)
    assert evaluate_model(model, tokenized, tmp_path / "runs" / family).test["f1"] > 0.9
    (found,) = NerPredictor(model.path).predict(["Maria works in Berlin ."])
    assert {(e["entity"], e["text"], e["start"]) for e in found} == {("PER", "Maria", 0), ("LOC", "Berlin", 15)}


@pytest.fixture(scope="module")
def ner_base_model(tiny_bert, tmp_path_factory):
    """A token-classification checkpoint with labels O, B-LOC, I-LOC, B-PER, I-PER (no ORG)."""
    root = tmp_path_factory.mktemp("ner-checkpoint")
    settings = tiny_run_settings(
        tiny_bert,
        root / "runs",
        dataset={"source": str(write_synthetic_dataset(root / "synthetic")), "max_train_samples": None},
        train={"epochs": 1},
    )
    _, tokenized = prepare(settings)
    return train(settings, tokenized, root / "runs" / "ner")


WIKIANN = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def head(network) -> dict[str, np.ndarray]:
    return {
        network.config.id2label[i]: network.classifier.weight[i].detach().numpy()
        for i in range(network.config.num_labels)
    }


def test_a_ner_checkpoint_keeps_the_rows_of_the_labels_it_shares(ner_base_model):
    from nerflow.tasks.training.pretrained import load_network

    before = head(load_network(ner_base_model.path))
    network = pretrained_network(BaseModelSettings(name=ner_base_model.path), WIKIANN)
    after = head(network)
    assert list(after) == WIKIANN and network.config.label2id == {n: i for i, n in enumerate(WIKIANN)}
    for label in ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"):
        assert np.array_equal(after[label], before[label]), label
    assert not any(np.array_equal(after["B-ORG"], row) for row in before.values())
    fresh = head(pretrained_network(BaseModelSettings(name=ner_base_model.path, head="fresh"), WIKIANN))
    assert not any(np.array_equal(fresh["B-PER"], row) for row in before.values())


def test_label_mapping_continues_differently_named_labels(ner_base_model):
    from nerflow.tasks.training.pretrained import load_network

    before = head(load_network(ner_base_model.path))
    mapped = pretrained_network(
        BaseModelSettings(name=ner_base_model.path, label_mapping={"B-ORG": "B-LOC", "I-ORG": "I-LOC"}), WIKIANN
    )
    assert np.array_equal(head(mapped)["B-ORG"], before["B-LOC"])


@pytest.mark.parametrize(
    "model, says",
    [
        ({"label_mapping": {"B-ORG": "B-COMPANY"}}, "'B-COMPANY' is not a label of"),
        ({"label_mapping": {"B-MISC": "B-LOC"}}, "'B-MISC' is not a dataset label"),
        ({"head": "reuse"}, "dataset labels ['B-ORG', 'I-ORG'] match no label of"),
    ],
)
def test_labels_that_do_not_match_are_a_clear_error(ner_base_model, model, says):
    with pytest.raises(InputError, match=None) as err:
        pretrained_network(BaseModelSettings(name=ner_base_model.path, **model), WIKIANN)
    assert says in str(err.value)


def test_a_checkpoint_without_a_head_cannot_be_mapped(tiny_bert):
    with pytest.raises(InputError, match="has no token-classification head"):
        pretrained_network(BaseModelSettings(name=str(tiny_bert), label_mapping={"B-PER": "B-PER"}), WIKIANN)
    torch.manual_seed(0)
    network = pretrained_network(BaseModelSettings(name=str(tiny_bert)), WIKIANN)
    assert network.config.num_labels == 7 and list(network.config.label2id) == WIKIANN
