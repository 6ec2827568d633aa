"""The operator's policy (nerflow.flows.policy): every setting that names code, a place, a host or a secret,
checked as a worker's flow-run process checks it. The end-to-end attacks are in test_security.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nerflow.flows.policy import (
    RunPolicy,
    RunRefused,
    check_dataset_policy,
    check_predict_policy,
    check_run_policy,
    policy_problems,
)
from nerflow.tasks.settings import DatasetSettings, SettingsError

WORKER = {"PREFECT__FLOW_RUN_ID": "1b3c5d7e-0000-4000-8000-000000000000"}  # what a worker sets for a deployment run


def problems(settings, **env) -> str:
    return "\n".join(policy_problems(settings, env))


def test_the_policy_is_in_force_in_a_worker_run_and_where_the_operator_set_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not RunPolicy.from_environment({}).enforced  # a local run: its owner's own settings
    worker = RunPolicy.from_environment(WORKER)
    assert worker.enforced and worker.roots == [tmp_path.resolve()]  # unset: the run's working folder only
    assert worker.packages == [] and not worker.remote_code and worker.s3_prefixes == [] and worker.hub_namespaces == []
    assert RunPolicy.from_environment({"NERFLOW_ALLOWED_S3": "s3://data/nerflow"}).enforced


def test_places_outside_the_roots_are_refused_symlinks_followed(tiny_settings, tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "runs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    env = {"NERFLOW_ALLOWED_ROOTS": str(allowed)}
    settings = tiny_settings(output_dir=str(allowed / "escape" / "runs"), cache_dir=str(allowed / "cache"))
    found = problems(settings, **env)
    assert f"output_dir={str(allowed / 'escape' / 'runs')!r} is outside the allowed folders" in found
    assert "cache_dir" not in found
    # the tiny BERT and the bundled sample are outside `allowed` too: both named, one line each
    assert "base_model.name=" in found and "dataset.source=" in found and len(found.splitlines()) == 3
    assert (
        problems(
            tiny_settings(output_dir=str(allowed / "runs")), NERFLOW_ALLOWED_ROOTS=os.pathsep.join([str(allowed), "/"])
        )
        == ""
    )


def test_code_in_settings_runs_only_where_the_operator_allows_it(tiny_settings, tmp_path):
    env = {**WORKER, "NERFLOW_ALLOWED_ROOTS": "/"}
    remote = tiny_settings(base_model={"trust_remote_code": True})
    assert "base_model.trust_remote_code=true: this worker runs no code shipped with a checkpoint" in problems(
        remote, **env
    )
    assert problems(remote, **env, NERFLOW_ALLOW_REMOTE_CODE="1") == ""
    package = tiny_settings(base_model={"name": "package:os"})
    assert "base_model.name='package:os': package not in NERFLOW_ALLOWED_PACKAGES (none)" in problems(package, **env)
    assert problems(package, **env, NERFLOW_ALLOWED_PACKAGES="os") == ""
    # Outside a worker the owner runs their own code.
    assert problems(remote) == "" and problems(package) == ""


def test_hosts_a_run_sends_to_are_the_operators(tiny_settings):
    env = {**WORKER, "NERFLOW_ALLOWED_ROOTS": "/"}
    mlflow = tiny_settings(tracking={"backends": ["mlflow"], "mlflow_tracking_uri": "http://attacker.example:5000"})
    assert (
        "tracking.mlflow_tracking_uri='http://attacker.example:5000' is not an allowed MLflow server (none;"
        in problems(mlflow, **env)
    )
    assert problems(mlflow, **env, NERFLOW_ALLOWED_TRACKING_URIS="http://attacker.example:5000/") == ""
    # The worker's own MLFLOW_TRACKING_URI is allowed by default.
    assert problems(mlflow, **env, MLFLOW_TRACKING_URI="http://attacker.example:5000") == ""
    hub = tiny_settings(publish={"targets": ["hub"], "hub_repo_id": "attacker/model"})
    assert "publish.hub_repo_id='attacker/model': namespace 'attacker' is not allowed" in problems(hub, **env)
    assert problems(hub, **env, NERFLOW_ALLOWED_HUB_NAMESPACES="team,attacker") == ""
    nodes = tiny_settings(compute={"nnodes": 2, "rdzv_endpoint": "attacker.example:29500"})
    assert "compute.rdzv_endpoint='attacker.example:29500' is not an allowed rendezvous" in problems(nodes, **env)


def test_s3_places_must_lie_under_an_allowed_prefix(tiny_settings):
    env = {**WORKER, "NERFLOW_ALLOWED_ROOTS": "/", "NERFLOW_ALLOWED_S3": "s3://team-bucket/nerflow"}
    ok = tiny_settings(publish={"targets": ["s3"], "s3_uri": "s3://team-bucket/nerflow/models"})
    assert problems(ok, **env) == ""
    for uri in ("s3://team-bucket/nerflow-evil/x", "s3://other-bucket/nerflow"):
        found = problems(tiny_settings(publish={"targets": ["s3"], "s3_uri": uri}), **env)
        assert f"publish.s3_uri={uri!r} is outside the allowed S3 places (s3://team-bucket/nerflow;" in found
    assert "dataset.source='s3://other-bucket/data'" in problems(
        tiny_settings(dataset={"source": "s3://other-bucket/data"}), **env
    )
    dots = tiny_settings(publish={"targets": ["s3"], "s3_uri": "s3://team-bucket/nerflow/../x"})
    assert "'.' and '..' segments are not allowed" in problems(dots)  # always, in force or not


def test_trainer_args_paths_are_places(tiny_settings, tmp_path):
    env = {**WORKER, "NERFLOW_ALLOWED_ROOTS": str(tmp_path)}
    settings = tiny_settings(
        output_dir=str(tmp_path / "runs"),
        dataset={"source": str(tmp_path)},
        base_model={"name": str(tmp_path)},
        train={
            "trainer_args": {
                "deepspeed": {"zero_optimization": {"offload_param": {"device": "nvme", "nvme_path": "/etc/nvme"}}},
                "fsdp_config": "/etc/fsdp.json",
            }
        },
    )
    found = problems(settings, **env)
    assert (
        "train.trainer_args.deepspeed.zero_optimization.offload_param.nvme_path='/etc/nvme' is outside the allowed folders"
        in found
    )
    assert "train.trainer_args.fsdp_config='/etc/fsdp.json' is outside the allowed folders" in found
    assert "device" not in found  # 'nvme' names no place


def test_secret_blocks_are_bound_to_their_use_by_the_operator(tiny_settings):
    # The attack of #21: the Hub token's block named as MLflow's credentials, the Hub's moved aside.
    attack = tiny_settings(
        tracking={"backends": ["mlflow"], "mlflow_credentials_block": "hf-token"}, publish={"hf_token_block": "unused"}
    )
    found = problems(attack, **WORKER, NERFLOW_ALLOWED_ROOTS="/", MLFLOW_TRACKING_URI="http://mlflow.team:5000")
    assert (
        "publish.hf_token_block='unused': this worker binds hub credentials to 'hf-token' (NERFLOW_SECRET_BLOCKS)"
        in found
    )
    assert (
        "tracking.mlflow_credentials_block='hf-token': this worker binds mlflow credentials to 'mlflow-credentials'"
        in found
    )
    env = {
        **WORKER,
        "NERFLOW_ALLOWED_ROOTS": "/",
        "NERFLOW_SECRET_BLOCKS": "hub=team-hf,mlflow=team-mlflow,aws=team-aws",
    }
    bound = tiny_settings(
        tracking={"backends": ["mlflow"], "mlflow_credentials_block": "team-mlflow"},
        publish={"hf_token_block": "team-hf", "aws_credentials_block": "team-aws"},
    )
    assert problems(bound, **env) == ""
    assert "binds aws credentials to 'team-aws'" in problems(
        tiny_settings(publish={"hf_token_block": "team-hf"}), **env
    )
    with pytest.raises(SettingsError, match="binds one Secret block to several uses"):
        RunPolicy.from_environment({"NERFLOW_SECRET_BLOCKS": "hub=shared,wandb=shared"})
    # Outside a worker the owner names their own blocks, but never the Hub token's for a tracker.
    assert "the Hub token would be sent to the MLflow server" in problems(
        tiny_settings(tracking={"backends": ["mlflow"], "mlflow_credentials_block": "hf-token"})
    )


def test_the_watcher_and_batch_prediction_check_their_places(tmp_path):
    env = {**WORKER, "NERFLOW_ALLOWED_ROOTS": str(tmp_path)}
    with pytest.raises(RunRefused, match="dataset.source='/etc' is outside the allowed folders"):
        check_dataset_policy(DatasetSettings(source="/etc"), env)
    check_dataset_policy(DatasetSettings(source="unimelb-nlp/wikiann"), env)  # a Hub id is no place on the worker
    with pytest.raises(RunRefused) as refused:
        check_predict_policy(str(tmp_path / "model"), "/etc/passwd", "s3://anywhere/out.jsonl", env)
    assert "input_path='/etc/passwd' is outside" in str(
        refused.value
    ) and "output_path='s3://anywhere/out.jsonl' is outside the allowed S3 places" in str(refused.value)
    assert "model_dir" not in str(refused.value)
    check_predict_policy(str(tmp_path / "model"), str(tmp_path / "in.txt"), str(tmp_path / "out.jsonl"), env)


def test_a_refusal_names_every_problem_at_once(tiny_settings):
    settings = tiny_settings(output_dir="/etc/cron.d", base_model={"name": "package:os", "trust_remote_code": True})
    with pytest.raises(RunRefused) as refused:
        check_run_policy(settings, {**WORKER, "NERFLOW_ALLOWED_ROOTS": str(Path(__file__).parent)})
    message = str(refused.value)
    assert message.startswith("run refused before any work:")
    assert message.count("\n  - ") == 4  # output_dir, dataset.source, package, remote code
