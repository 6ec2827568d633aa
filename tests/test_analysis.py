"""Error analysis and the label-issue finder: the schemas agree with hand-counted examples, errors are
classed as a reader would class them, and the finder recovers labels broken on purpose."""

import json

import numpy as np
import pytest

from conftest import prepare, tiny_run_settings, train_job, write_synthetic_dataset
from nerflow.tasks.analysis.errors import error_classes, schema_scores, sentence_losses, worst_sentences

# Four sentences, each error kind: PER cut short (boundary), LOC read as ORG (type), a spurious MISC,
# a missed ORG, and a PER read as a LOC of other boundaries (boundary+type) beside a spurious LOC.
GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["O", "O"],
    ["B-ORG"],
    ["B-PER", "I-PER", "O"],
]
PRED = [
    ["B-PER", "O", "O", "B-ORG", "O"],
    ["B-MISC", "O"],
    ["O"],
    ["O", "B-LOC", "B-LOC"],
]


def counts(result):
    return {k: result[k] for k in ("correct", "incorrect", "partial", "missed", "spurious")}


def test_the_semeval_schemas_agree_with_hand_counts():
    overall = schema_scores(GOLD, PRED)["overall"]
    # 4 gold entities, 4 predicted (PER, ORG, MISC, LOC, LOC: the last sentence predicts two LOCs).
    assert counts(overall["strict"]) == {"correct": 0, "incorrect": 3, "partial": 0, "missed": 1, "spurious": 2}
    assert counts(overall["exact"]) == {"correct": 1, "incorrect": 2, "partial": 0, "missed": 1, "spurious": 2}
    assert counts(overall["partial"]) == {"correct": 1, "incorrect": 0, "partial": 2, "missed": 1, "spurious": 2}
    assert counts(overall["ent_type"]) == {"correct": 1, "incorrect": 2, "partial": 0, "missed": 1, "spurious": 2}
    assert overall["partial"]["precision"] == pytest.approx((1 + 0.5 * 2) / 5, abs=1e-4)


def test_strict_mode_refuses_an_entity_that_starts_with_i():
    gold, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    scores = schema_scores(gold, pred)
    assert scores["seqeval_strict"]["f1"] == 0.0
    from seqeval.metrics import f1_score

    assert f1_score(gold, pred) == 1.0  # the default (conlleval) mode reads I-PER I-PER as a PER


def test_errors_are_classed_by_kind_and_type():
    table = error_classes(GOLD, PRED)
    assert table["PER"] == {"correct": 0, "type": 0, "boundary": 1, "boundary+type": 1, "missed": 0, "spurious": 0}
    assert table["LOC"]["type"] == 1 and table["ORG"]["missed"] == 1 and table["MISC"]["spurious"] == 1
    assert table["LOC"]["spurious"] == 1  # the second LOC of the last sentence overlaps no gold entity
    assert table["all"] == {"correct": 0, "type": 1, "boundary": 1, "boundary+type": 1, "missed": 1, "spurious": 2}
    assert list(table)[-1] == "all"


def test_the_worst_sentences_are_those_the_model_finds_least_likely():
    names = ["O", "B-PER", "I-PER"]
    sure, unsure = np.log([[0.9, 0.05, 0.05]] * 2), np.log([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    losses = sentence_losses([sure, unsure], [[0, 0], [0, 0]])
    assert losses[1] > losses[0] > 0
    rows = worst_sentences(
        [["a", "b"], ["Ann", "Lee"]], [["O", "O"], ["O", "O"]], [["O", "O"], ["B-PER", "I-PER"]], losses, 1
    )
    assert [r["sentence"] for r in rows] == [1] and rows[0]["predicted"][0]["text"] == "Ann Lee"
    assert rows[0]["errors"] == ["spurious PER"] and len(names) == 3


def test_the_finder_judges_a_tag_against_what_that_tag_usually_gets():
    """An `O` word given 0.12 is stranger than an `I-ORG` word given 0.10 when `O` words usually get
    0.85 and `I-ORG` words 0.4: the calibrated ranking puts the `O` word's sentence first, where
    cleanlab's score on the raw probabilities puts the other one first."""
    from cleanlab.token_classification.rank import get_label_quality_scores

    from nerflow.tasks.analysis.label_issues import rank_label_issues

    names = ["O", "B-ORG", "I-ORG"]
    usual = np.array([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.85, 0.1, 0.05]])  # B-ORG, I-ORG, O words
    odd_inside = usual.copy()
    odd_inside[1] = [0.89, 0.01, 0.10]  # an I-ORG word the model reads as O
    odd_outside = usual.copy()
    odd_outside[2] = [0.12, 0.87, 0.01]  # an O word the model reads as B-ORG
    probs = [odd_inside, odd_outside] + [usual] * 40
    labels = [[1, 2, 0]] * len(probs)
    raw, _ = get_label_quality_scores([np.array(x) for x in labels], probs, sentence_score_method="softmin")
    assert raw[0] < raw[1]  # uncalibrated, the I-ORG word's sentence would come first

    rows = rank_label_issues(labels, [np.log(p) for p in probs], [["a", "b", "c"]] * len(probs), names, labels)
    assert [r["sentence"] for r in rows] == [1, 0]
    assert rows[0]["words"] == [2] and rows[1]["words"] == [1] and rows[0]["score"] < rows[1]["score"]


@pytest.mark.slow  # four trainings of the tiny model
def test_the_finder_recovers_labels_broken_on_purpose(tiny_bert, tmp_path):
    from nerflow.tasks.analyze import analyze
    from nerflow.tasks.refs import RunContext
    from nerflow.tasks.settings import AnalysisSettings
    from nerflow.tasks.train import train_model

    folder = write_synthetic_dataset(tmp_path / "synthetic", n_train=200)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    broken = list(range(0, 200, 20))  # 10 sentences: the person's tags become LOC (a type swap)
    for i in broken:
        rows[i]["ner_tags"] = ["B-LOC" if t == "B-PER" else t for t in rows[i]["ner_tags"]]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = tiny_run_settings(
        tiny_bert,
        tmp_path / "runs",
        dataset={"source": str(folder), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 4, "batch_size": 16, "learning_rate": 5e-3},
    )
    dataset, tokenized = prepare(settings)
    run_dir = tmp_path / "runs" / "run"
    job = train_job(settings, tokenized, run_dir, "run")
    model = train_model(job)
    ref = analyze(
        model,
        dataset,
        tokenized,
        AnalysisSettings(label_issues="on", folds=2),
        job,
        RunContext.for_run(settings, "run", run_dir),
        train_model,
    )
    found = [json.loads(line) for line in (run_dir / "label_issues.jsonl").read_text().splitlines()]
    top = {r["sentence"] for r in found[: len(broken)]}
    recall = len(top & set(broken)) / len(broken)
    assert recall >= 0.8, (recall, [(r["sentence"], r["score"]) for r in found[:15]])
    first = next(r for r in found if r["sentence"] in broken)
    assert "B-LOC" in first["given"] and "B-PER" in first["suggested"]
    assert ref.label_issues == len(found) and (run_dir / "errors.jsonl").is_file()
    assert (
        json.loads((folder / "train.jsonl").read_text().splitlines()[0])["ner_tags"] == rows[0]["ner_tags"]
    )  # untouched
