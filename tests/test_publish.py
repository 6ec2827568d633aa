"""Publishing with the real huggingface_hub client (against a local Hub stand-in) and the real boto3
client (against moto's server), both on 127.0.0.1."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import SAMPLE_DIR
from hub_standin import HubStandIn
from nerflow.tasks.publish import publish_run
from nerflow.tasks.publishing.hub import model_digest
from nerflow.tasks.publishing.s3 import publish_to_s3, s3_published_f1
from nerflow.tasks.runtime.errors import PublishError
from nerflow.tasks.settings import PublishSettings, RunSettings

pytestmark = pytest.mark.slow  # moto's S3 server and the Hub stand-in, full flow runs

HF_TOKEN = "hf_FAKEtokenDoNotLog0123456789abcdef"
AWS_KEY_ID = "AKIAFAKEKEYDONOTLOG1"
AWS_SECRET = "fakeSecretDoNotLog/0123456789abcdefghijklm"
FAST = 0.01  # backoff base in seconds for tests


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    # Secret blocks are read through the Prefect API; a test server keeps that fast and isolated.
    from prefect_db import seeded_test_harness

    with seeded_test_harness():
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert) -> Path:
    """A real, finished run folder from the plain step functions (tiny BERT, 64 sentences)."""
    from conftest import SAMPLE_DIR, prepare, train
    from nerflow.tasks.card import render_model_card
    from nerflow.tasks.evaluate import evaluate_model

    root = tmp_path_factory.mktemp("published")
    s = RunSettings.model_validate(
        {
            "dataset": {"source": str(SAMPLE_DIR), "max_train_samples": 64, "max_eval_samples": 32, "language": "en"},
            "base_model": {"name": str(tiny_bert), "hub_id": "prajjwal1/bert-tiny"},
            "tokenize": {"max_length": 64},
            "train": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
            "output_dir": str(root),
            "card": {"model_name": "tiny-ner"},
        }
    )
    run_dir = root / "run-1"
    run_dir.mkdir()
    (run_dir / "settings.json").write_text(s.model_copy(update={"run_name": "run-1"}).model_dump_json())
    dataset, tokenized = prepare(s)
    model = train(s, tokenized, run_dir)
    evaluation = evaluate_model(model, tokenized, run_dir)
    render_model_card(model, evaluation, dataset, tokenized, s, "run-1")
    return run_dir


def copy_run(run_dir: Path, dest: Path, name: str, test_f1: float) -> Path:
    """Another finished run with a chosen test F1 (to exercise the gate)."""
    new = shutil.copytree(run_dir, dest / name)
    metrics = json.loads((new / "metrics.json").read_text())
    metrics["word_level"]["test"]["f1"] = test_f1
    (new / "metrics.json").write_text(json.dumps(metrics))
    from huggingface_hub import ModelCard

    card = ModelCard.load(new / "model" / "README.md")  # the card's model-index says the same
    for result in card.data.eval_results:
        if result.metric_type == "f1":
            result.metric_value = round(test_f1, 4)
    card.save(new / "model" / "README.md")
    return new


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    with HubStandIn(token=HF_TOKEN) as standin:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the stand-in is local
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
        yield standin


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


# ------------------------------------------------------------------------------------------------- hub


def test_hub_publish_commits_once_per_run(finished_run, hub):
    from huggingface_hub import HfApi, ModelCard

    settings = PublishSettings(targets=["hub"], hub_repo_id="nerflow/tiny-ner", hub_tag_runs=True)
    result = publish_run(finished_run, settings, "tiny-ner", backoff_base_s=FAST)
    assert result.published and result.hub_new_commit
    (commit,) = hub.commits("nerflow/tiny-ner")
    assert result.hub_commit_url == f"{hub.url}/nerflow/tiny-ner/commit/{commit.oid}"
    assert (
        f"[nerflow run run-1 model {model_digest(finished_run / 'model')}]" in commit.title
        and "test F1" in commit.title
    )
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(commit.files)
    assert hub.repos["nerflow/tiny-ner"].private
    assert hub.repos["nerflow/tiny-ner"].tags == {"run-run-1": commit.oid}

    # The card came through intact: download it with the real client and read its model-index.
    api = HfApi(endpoint=hub.url, token=HF_TOKEN)
    card = ModelCard.load(
        api.hf_hub_download("nerflow/tiny-ner", "README.md", local_dir=str(finished_run.parent / "dl"))
    )
    local = ModelCard.load(finished_run / "model" / "README.md")
    assert card.data.to_dict() == local.data.to_dict()
    assert [f.path for f in api.list_repo_tree("nerflow/tiny-ner")] == sorted(commit.files)

    again = publish_run(finished_run, settings, "tiny-ner", backoff_base_s=FAST)
    assert again.hub_new_commit is False and again.hub_commit_url == result.hub_commit_url
    assert len(hub.commits("nerflow/tiny-ner")) == 1


def retrain(run_dir: Path) -> None:
    """What re-training a run into its folder leaves: other weights in model/ (the same files)."""
    from safetensors.torch import load_file, save_file

    weights = run_dir / "model" / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})


def test_a_retrained_run_publishes_its_new_weights_once_and_moves_its_tag(finished_run, hub, tmp_path):
    """Publishing is keyed on the content: run R published, re-trained in its folder (new weights),
    published again: one new commit holding the new weights; published once more: nothing."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run-R"))
    settings = PublishSettings(targets=["hub"], hub_repo_id="nerflow/retrained", hub_tag_runs=True)
    first = publish_run(run, settings, "tiny-ner", FAST)
    retrain(run)
    second = publish_run(run, settings, "tiny-ner", FAST)
    assert first.hub_new_commit and second.hub_new_commit and first.hub_commit_url != second.hub_commit_url
    old, new = hub.commits("nerflow/retrained")
    assert (
        new.files["model.safetensors"]
        == (run / "model" / "model.safetensors").read_bytes()
        != old.files["model.safetensors"]
    )
    assert hub.repos["nerflow/retrained"].tags == {"run-run-R": new.oid}
    third = publish_run(run, settings, "tiny-ner", FAST)
    assert third.hub_new_commit is False and third.hub_commit_url == second.hub_commit_url
    assert len(hub.commits("nerflow/retrained")) == 2


def test_two_publishes_of_one_run_at_once_make_one_commit(finished_run, hub, tmp_path):
    """Two `nerflow publish` processes started together on one run folder: the run lock serialises
    them, the second finds the content on the Hub already; one commit."""
    import os
    import subprocess
    import sys

    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    # On this module's Prefect server, as an operator's machine with a configured API runs them.
    env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN, "PREFECT_API_URL": get_current_settings().api.url}
    cmd = [
        sys.executable,
        "-m",
        "nerflow.flows.cli.main",
        "publish",
        str(finished_run),
        "--target",
        "hub",
        "--repo-id",
        "nerflow/concurrent",
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in outs] == [0, 0], outs
    assert len(hub.commits("nerflow/concurrent")) == 1


def test_hub_503_twice_then_success_makes_exactly_one_commit(finished_run, hub):
    hub.fail_next("POST", "/commit/", 503, times=2)
    result = publish_run(finished_run, PublishSettings(targets=["hub"], hub_repo_id="nerflow/flaky"), "tiny-ner", FAST)
    assert result.published
    assert len(hub.commits("nerflow/flaky")) == 1
    assert sum(1 for method, path in hub.requests if method == "POST" and "/commit/" in path) == 3


def test_hub_401_fails_fast_with_a_clear_message(finished_run, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTokenValue000000000000000")
    with pytest.raises(PublishError) as err:
        publish_run(finished_run, PublishSettings(targets=["hub"], hub_repo_id="nerflow/denied"), "tiny-ner", FAST)
    message = str(err.value)
    assert "HTTP 401" in message and "hf-token" in message and "HF_TOKEN" in message
    assert "hf_wrongToken" not in message
    # No retry on 401: one create attempt (the client's own follow-up look-up aside), no commit.
    assert [r for r in hub.requests if r[0] == "POST"] == [("POST", "/api/repos/create")]


def test_hub_without_token_says_what_to_set(finished_run, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="create the Prefect Secret block 'hf-token' or set HF_TOKEN"):
        publish_run(finished_run, PublishSettings(targets=["hub"], hub_repo_id="nerflow/none"), "tiny-ner", FAST)
    assert hub.requests == []


def test_a_404_from_another_endpoint_is_not_reported_as_a_missing_repository(finished_run, hub):
    hub.fail_next("POST", "/api/validate-yaml", 404, times=5)  # a Hub-compatible server without this endpoint
    with pytest.raises(PublishError) as err:
        publish_run(finished_run, PublishSettings(targets=["hub"], hub_repo_id="nerflow/partial"), "tiny-ner", FAST)
    message = str(err.value)
    assert "/api/validate-yaml answered HTTP 404" in message and "was not found" not in message
    # The repository itself missing (the Hub says RepoNotFound) is explained as such.
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    from nerflow.tasks.publishing.hub import explain_hub_error

    request = httpx.Request("POST", f"{hub.url}/api/models/nerflow/absent/commit/main")
    missing = RepositoryNotFoundError("404 Repository Not Found", response=httpx.Response(404, request=request))
    assert "nerflow/absent was not found (HTTP 404)" in str(explain_hub_error(missing, "nerflow/absent", "hf-token"))


def test_gate_reads_the_published_card(finished_run, hub, tmp_path):
    settings = PublishSettings(targets=["hub"], hub_repo_id="nerflow/gated", require_improvement=True)
    first = publish_run(finished_run, settings, "tiny-ner", FAST)
    published_f1 = first.gate.new_f1
    worse = copy_run(finished_run, tmp_path, "run-worse", published_f1 - 0.05)
    skipped = publish_run(worse, settings, "tiny-ner", FAST)
    assert not skipped.published and "does not beat the published model's" in skipped.gate.reason
    assert skipped.gate.published_f1 == pytest.approx(round(published_f1, 4))
    assert len(hub.commits("nerflow/gated")) == 1


def test_publish_gets_through_connections_dropped_without_an_answer(finished_run, hub):
    hub.drop_next_connections(2)  # a load balancer restarting: the first two requests get no response
    result = publish_run(
        finished_run, PublishSettings(targets=["hub"], hub_repo_id="nerflow/dropped"), "tiny-ner", FAST
    )
    assert result.published and len(hub.commits("nerflow/dropped")) == 1


def test_a_run_published_as_a_pull_request_twice_opens_one_pull_request(finished_run, hub):
    settings = PublishSettings(targets=["hub"], hub_repo_id="nerflow/reviewed", hub_create_pr=True)
    first = publish_run(finished_run, settings, "tiny-ner", FAST)
    again = publish_run(finished_run, settings, "tiny-ner", FAST)
    (pull_request,) = hub.repos["nerflow/reviewed"].pull_requests
    assert "[nerflow run run-1 model " in pull_request.title and hub.commits("nerflow/reviewed") == []
    assert {"model.safetensors", "config.json", "README.md"} <= set(pull_request.commits[-1].files)
    assert first.hub_new_commit and not again.hub_new_commit
    assert first.hub_commit_url == again.hub_commit_url == f"{hub.url}/nerflow/reviewed/discussions/1"


def test_the_gate_is_decided_again_when_another_model_is_published_in_between(finished_run, hub, tmp_path, monkeypatch):
    """Publisher B reads the Hub's model (F1 x), another publisher then commits a much better model;
    B's commit names the commit it compared against, the Hub refuses it, B compares again and stops."""
    import nerflow.tasks.publish

    repo = "nerflow/raced"
    settings = PublishSettings(targets=["hub"], hub_repo_id=repo, require_improvement=True)
    first = publish_run(finished_run, settings, "tiny-ner", FAST)
    better = copy_run(finished_run, tmp_path, "run-better", first.gate.new_f1 + 0.05)
    best = copy_run(finished_run, tmp_path, "run-best", first.gate.new_f1 + 0.2)
    read = nerflow.tasks.publish.hub_published_f1
    raced = []

    def read_then_lose_the_race(api, repo_id):
        answer = read(api, repo_id)
        if not raced:  # between B's read and B's commit, the best model lands first
            raced.append(publish_run(best, PublishSettings(targets=["hub"], hub_repo_id=repo), "tiny-ner", FAST))
        return answer

    monkeypatch.setattr(nerflow.tasks.publish, "hub_published_f1", read_then_lose_the_race)
    result = publish_run(better, settings, "tiny-ner", FAST)
    assert not result.published and result.gate.published_f1 == pytest.approx(round(first.gate.new_f1 + 0.2, 4))
    titles = [c.title for c in hub.commits(repo)]
    assert len(titles) == 2 and "run-best" in titles[-1] and not any("run-better" in t for t in titles)


# -------------------------------------------------------------------------------------------------- s3


def test_s3_upload_writes_manifest_last_and_retry_completes(finished_run, s3):
    client, bucket = s3
    settings = PublishSettings(targets=["s3"], s3_uri=f"s3://{bucket}/nerflow")
    puts = {"n": 0, "fail_after": 3}

    def flaky_network(request, **kwargs):
        puts["n"] += 1
        if puts["n"] > puts["fail_after"]:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="simulated outage")

    client.meta.events.register("before-send.s3.PutObject", flaky_network)
    with pytest.raises(Exception, match="simulated outage"):
        publish_to_s3(finished_run, "run-1", "tiny-ner", 0.5, settings, client, backoff_base_s=FAST)
    partial = keys(client, bucket)
    assert len(partial) > 0 and not any(k.endswith("manifest.json") for k in partial)

    client.meta.events.unregister("before-send.s3.PutObject", flaky_network)
    uri, new = publish_to_s3(finished_run, "run-1", "tiny-ner", 0.5, settings, client, backoff_base_s=FAST)
    assert new and uri == f"s3://{bucket}/nerflow/tiny-ner/run-1/"
    manifest = json.loads(client.get_object(Bucket=bucket, Key="nerflow/tiny-ner/run-1/manifest.json")["Body"].read())
    prefix = "nerflow/tiny-ner/run-1/"
    assert {prefix + f["path"] for f in manifest["files"]} | {prefix + "manifest.json"} == set(keys(client, bucket))
    assert {"model/model.safetensors", "model/README.md", "metrics.json", "settings.json"} <= {
        f["path"] for f in manifest["files"]
    }
    for entry in manifest["files"]:
        body = client.get_object(Bucket=bucket, Key=prefix + entry["path"])["Body"].read()
        assert len(body) == entry["size"]

    # Same run again: the manifest matches, nothing is uploaded.
    before = client.get_object(Bucket=bucket, Key=prefix + "manifest.json")["LastModified"]
    assert publish_to_s3(finished_run, "run-1", "tiny-ner", 0.5, settings, client, backoff_base_s=FAST)[1] is False
    assert client.get_object(Bucket=bucket, Key=prefix + "manifest.json")["LastModified"] == before


def test_s3_republishing_a_changed_run_never_changes_objects_under_an_existing_manifest(finished_run, s3, tmp_path):
    client, bucket = s3
    settings = PublishSettings(targets=["s3"], s3_uri=f"s3://{bucket}/nerflow")
    first = publish_run(finished_run, settings, "tiny-ner", FAST)
    before = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys(client, bucket)}
    changed = copy_run(finished_run, tmp_path, "run-1", 0.99)  # the same run name, retrained: new metrics
    again = publish_run(changed, settings, "tiny-ner", FAST)
    assert again.s3_new_upload and again.s3_uri.startswith(first.s3_uri + "rev-")
    for key, body in before.items():  # the first upload and its manifest are untouched
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=again.s3_uri.split(bucket + "/", 1)[1] + "manifest.json")["Body"].read()
    )
    assert manifest["test_f1"] == 0.99
    assert publish_run(changed, settings, "tiny-ner", FAST).s3_new_upload is False  # and it is idempotent


def test_s3_gate_skips_worse_and_publishes_better(finished_run, s3, tmp_path):
    client, bucket = s3
    settings = PublishSettings(targets=["s3"], s3_uri=f"s3://{bucket}/prod", require_improvement=True, min_f1=0.0)
    base = copy_run(finished_run, tmp_path, "run-a", 0.50)
    assert publish_run(base, settings, "tiny-ner", FAST).published
    assert s3_published_f1(client, settings.s3_uri, "tiny-ner")[0] == pytest.approx(0.50)

    worse = publish_run(copy_run(finished_run, tmp_path, "run-b", 0.45), settings, "tiny-ner", FAST)
    assert not worse.published
    assert not any("/run-b/" in k for k in keys(client, bucket))

    better = publish_run(copy_run(finished_run, tmp_path, "run-c", 0.55), settings, "tiny-ner", FAST)
    assert better.published and better.s3_uri.endswith("/tiny-ner/run-c/")
    assert s3_published_f1(client, settings.s3_uri, "tiny-ner")[0] == pytest.approx(0.55)

    floor = PublishSettings(targets=["s3"], s3_uri=f"s3://{bucket}/prod", min_f1=0.9)
    below = publish_run(copy_run(finished_run, tmp_path, "run-d", 0.6), floor, "tiny-ner", FAST)
    assert not below.published and "below the floor" in below.gate.reason


def test_s3_missing_bucket_fails_with_what_to_fix(finished_run, s3):
    client, _ = s3
    settings = PublishSettings(targets=["s3"], s3_uri="s3://no-such-bucket-here/x")
    with pytest.raises(PublishError, match="not found .*check publish.s3_uri"):
        publish_to_s3(finished_run, "run-1", "tiny-ner", 0.5, settings, client, backoff_base_s=FAST)


def test_cli_publishes_an_existing_run(finished_run, hub, s3, capsys):
    from nerflow.flows.cli.main import main

    client, bucket = s3
    code = main(
        [
            "publish",
            str(finished_run),
            "--target",
            "hub",
            "--repo-id",
            "nerflow/cli",
            "--target",
            "s3",
            "--s3-uri",
            f"s3://{bucket}/cli",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{hub.url}/nerflow/cli/commit/" in out and f"s3://{bucket}/cli/tiny-ner/run-1/" in out
    assert "cli/tiny-ner/run-1/manifest.json" in keys(client, bucket)


def test_secrets_never_reach_files_logs_or_artifacts(tiny_settings, hub, s3, monkeypatch):
    """A full flow run publishing to the Hub (token from a Secret block) and S3 (keys from the
    environment): the secrets are used, and appear in no file, log line or artifact of the run."""
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from nerflow.flows.finetune import finetune_ner

    client, bucket = s3
    Secret(value=HF_TOKEN).save("hf-token-test", overwrite=True)
    monkeypatch.delenv("HF_TOKEN")  # the block must be the source
    settings = tiny_settings(
        train={"epochs": 1},
        publish={
            "targets": ["local", "hub", "s3"],
            "hub_repo_id": "nerflow/secret-test",
            "hf_token_block": "hf-token-test",
            "s3_uri": f"s3://{bucket}/runs",
        },
    )
    state = finetune_ner(settings=settings, return_state=True)
    result = state.result()
    assert result.published and "/nerflow/secret-test/commit/" in result.published_to
    assert f"Bearer {HF_TOKEN}" in hub.authorizations  # the token was really used
    assert any(k.endswith("/manifest.json") for k in keys(client, bucket))

    secrets = [HF_TOKEN, AWS_KEY_ID, AWS_SECRET]
    searched = 0
    for root in (Path(settings.output_dir), Path(PREFECT_LOCAL_STORAGE_PATH.value())):
        for path in (p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            searched += 1
            assert not any(secret.encode() in data for secret in secrets), path
    assert searched > 10
    for commit in hub.commits("nerflow/secret-test"):
        assert not any(secret.encode() in blob for blob in commit.files.values() for secret in secrets)
        assert not any(secret in commit.title + commit.message for secret in secrets)

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are shipped in the background; make sure all arrived
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    text = "\n".join(log.message for log in logs) + "\n".join(f"{a.data} {a.description}" for a in artifacts)
    assert "published to" in text and {"quality-gate", "hub-commit", "metrics-overall"} <= {a.key for a in artifacts}
    assert not any(secret in text for secret in secrets)


# ------------------------------------------------------------------------------------ hub downloads


def test_tokenize_loads_a_hub_tokenizer_through_dropped_connections(hub, tiny_bert, tmp_path, monkeypatch):
    """The tokenizer of a Hub checkpoint, served by the stand-in, whose first two connections get no
    answer: the load gets through (huggingface_hub 2 retries a dropped request itself; when it gives
    up, transformers raises an OSError caused by httpx's error, which the task's retry condition takes
    as transient: tests/test_reliability.py)."""
    import huggingface_hub.constants
    from prefect import flow

    from nerflow.tasks.ingest import ingest_dataset
    from nerflow.tasks.refs import RunContext
    from nerflow.tasks.tokenize import tokenize_task

    # Both are computed from HF_ENDPOINT when huggingface_hub is imported, before the stand-in exists.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.add_model_repo(
        "nerflow/tiny-bert", {p.name: p.read_bytes() for p in tiny_bert.iterdir() if p.suffix != ".safetensors"}
    )
    settings = RunSettings.model_validate(
        {
            "dataset": {"source": str(SAMPLE_DIR), "max_train_samples": 16, "max_eval_samples": 8},
            "base_model": {"name": "nerflow/tiny-bert"},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    ctx = RunContext.for_run(settings, "hub-tokenizer")
    dataset = ingest_dataset(settings.dataset, settings.resolved_cache_dir())
    hub.drop_next_connections(2)

    @flow
    def tokenize_only():
        from nerflow.tasks.runtime.caching import ensure_result_storage

        ensure_result_storage()  # what nerflow's flows do before their first cached step
        return tokenize_task.with_options(retry_delay_seconds=0)(
            dataset, settings.base_model, settings.tokenize, ctx, return_state=True
        )

    state = tokenize_only()
    assert state.is_completed() and state.result().stats["train"]["sentences"] == 16
    assert hub._drops == 0 and any("/resolve/" in path for _, path in hub.requests)  # dropped, then served


# ----------------------------------------------------------------------------------------- predict


def test_predict_flow_reads_from_and_writes_to_s3(finished_run, s3):
    """The `predict_ner` flow as a deployment runs it: labelled input in a bucket, predictions and
    their scores back in the bucket, a summary artifact on the flow run."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from nerflow.flows.predict import predict_ner

    client, bucket = s3
    test_rows = (SAMPLE_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines()[:25]
    client.put_object(Bucket=bucket, Key="in/docs.jsonl", Body="\n".join(test_rows).encode())
    state = predict_ner(
        model_dir=str(finished_run / "model"),
        input_path=f"s3://{bucket}/in/docs.jsonl",
        output_path=f"s3://{bucket}/out/docs.pred.jsonl",
        labelled=True,
        return_state=True,
    )
    summary = state.result()
    assert state.is_completed() and summary["documents"] == 25
    assert keys(client, bucket) == ["in/docs.jsonl", "out/docs.pred.jsonl", "out/docs.pred.jsonl.scores.json"]
    lines = client.get_object(Bucket=bucket, Key="out/docs.pred.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(line)["tokens"] for line in lines] == [json.loads(row)["tokens"] for row in test_rows]
    scores = json.loads(client.get_object(Bucket=bucket, Key="out/docs.pred.jsonl.scores.json")["Body"].read())
    assert scores["f1"] == summary["f1"] and 0.0 <= scores["f1"] <= 1.0

    async def artifact_keys() -> list[str]:
        run_id = state.state_details.flow_run_id
        async with get_client() as prefect:
            found = await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        return [a.key for a in found]

    assert "prediction-summary" in asyncio.run(artifact_keys())


def test_a_mistyped_or_gated_checkpoint_is_one_line_from_the_hub_and_a_real_one_passes(hub, monkeypatch):
    """Online, the Hub's own answers (RepoNotFound, GatedRepo) become one line before any work; an
    existing repository passes the check."""
    import huggingface_hub.constants

    from nerflow.tasks.runtime.errors import InputError
    from nerflow.tasks.settings import BaseModelSettings
    from nerflow.tasks.training.pretrained import check_base_model

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hub.add_model_repo("nerflow/tiny-bert", {"config.json": b"{}"})
    hub.add_model_repo("meta/gated-model", {"config.json": b"{}"}).gated = True
    check_base_model(BaseModelSettings(name="nerflow/tiny-bert"))
    with pytest.raises(
        InputError, match=r"base_model.name 'nerflow/tiny-brt': no such repository on the Hub \(a typo\?"
    ):
        check_base_model(BaseModelSettings(name="nerflow/tiny-brt"))
    with pytest.raises(InputError, match=r"base_model.name 'meta/gated-model' is gated on the Hub: accept its terms"):
        check_base_model(BaseModelSettings(name="meta/gated-model"))
