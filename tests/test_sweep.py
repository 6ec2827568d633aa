"""Hyperparameter sweeps: one finetune_ner run per grid point on a real Prefect server; tokenization
runs once, the leaderboard fills up, the validation-best is the one published, a failing trial is
retried and marked without stopping the sweep."""

import json
from pathlib import Path

import pytest

from conftest import tiny_run_settings, write_synthetic_dataset
from prefect_db import seeded_test_harness

pytestmark = pytest.mark.slow  # several whole flow runs on a Prefect server


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with seeded_test_harness():
        yield


@pytest.fixture
def sweep_settings(tiny_bert, tmp_path):
    data = write_synthetic_dataset(tmp_path / "synthetic")
    return tiny_run_settings(
        tiny_bert,
        tmp_path / "runs",
        dataset={"source": str(data), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
    )


def all_task_runs() -> list:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_runs(limit=200)


def leaderboard_rows() -> list[dict]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sweep-leaderboard"]))
        )
    return json.loads(max(versions, key=lambda a: a.created).data)


def test_a_grid_sweep_tokenizes_once_and_publishes_the_validation_best(sweep_settings):
    from nerflow.flows.sweep import sweep_ner

    grid = {"train.learning_rate": [1e-4, 5e-3], "train.epochs": [1, 2]}
    result = sweep_ner(settings=sweep_settings, grid=grid, name="grid")
    assert [t.state for t in result.trials] == ["completed"] * 4
    assert {json.dumps(t.overrides, sort_keys=True) for t in result.trials} == {
        json.dumps({"train.learning_rate": lr, "train.epochs": e}, sort_keys=True)
        for lr in (1e-4, 5e-3)
        for e in (1, 2)
    }
    rows = leaderboard_rows()
    assert len(rows) == 4 and [r["validation_f1"] for r in rows] == sorted(
        (r["validation_f1"] for r in rows), reverse=True
    )
    best = max(result.trials, key=lambda t: t.validation_f1)
    assert result.best.number == best.number and rows[0]["trial"] == best.number
    assert result.publication.published and result.publication.local_path == str(Path(best.run_dir) / "model")
    # The test split never chose: the best by test F1 may be another trial, and that is fine.
    tokenize_runs = [r for r in all_task_runs() if r.name.startswith("tokenize-")]
    assert (
        sum(r.state.name == "Completed" for r in tokenize_runs) == 1 and len(tokenize_runs) == 5
    )  # the sweep's + 4 Cached


def test_a_failing_trial_is_retried_then_marked_and_the_sweep_goes_on(sweep_settings, monkeypatch):
    import nerflow.tasks.train
    from nerflow.flows.sweep import sweep_ner

    train = nerflow.tasks.train.train_model
    attempts = []

    def broken_for_high_learning_rates(job):
        if job.recipe.learning_rate > 1e-2:
            attempts.append(job.run_name)
            raise RuntimeError("simulated: the GPU fell off the bus")
        return train(job)

    monkeypatch.setattr(nerflow.tasks.train, "train_model", broken_for_high_learning_rates)
    result = sweep_ner(settings=sweep_settings, grid={"train.learning_rate": [1e-3, 5e-2]}, name="faulty")
    by_rate = {t.overrides["train.learning_rate"]: t for t in result.trials}
    assert by_rate[1e-3].state == "completed" and result.best.number == by_rate[1e-3].number
    failed = by_rate[5e-2]
    assert failed.state == "failed" and failed.attempts == 2 and "the GPU fell off the bus" in failed.message
    assert set(attempts) == {"faulty-t2"}


def test_a_grid_value_outside_the_policy_refuses_the_sweep_before_any_trial(
    sweep_settings, tiny_bert, tmp_path, monkeypatch
):
    import os

    from nerflow.flows.policy import RunRefused
    from nerflow.flows.sweep import sweep_ner

    monkeypatch.setenv("NERFLOW_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path), str(tiny_bert)]))
    monkeypatch.setenv("NERFLOW_ALLOWED_PACKAGES", "")
    grid = {"output_dir": [str(tmp_path / "runs"), "/etc/nerflow-sweep"], "base_model.name": ["package:os"]}
    with pytest.raises(RunRefused) as refused:
        sweep_ner(settings=sweep_settings, grid=grid, name="escape")
    assert "output_dir='/etc/nerflow-sweep' is outside the allowed folders" in str(refused.value)
    assert "base_model.name='package:os': package not in NERFLOW_ALLOWED_PACKAGES" in str(refused.value)
    assert not (tmp_path / "runs").exists() and not Path("/etc/nerflow-sweep").exists()
