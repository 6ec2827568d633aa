"""What happens when things break: half-written checkpoints, failed saves, stale caches, wrapped network
errors. Each of these failed on the code before the reliability work (see docs/reliability.md)."""

import errno
import logging
import shutil
from pathlib import Path

import httpx
import pytest

import nerflow.tasks.train
from conftest import prepare, train_job, write_synthetic_dataset
from nerflow.tasks.runtime.files import SEAL, is_sealed
from nerflow.tasks.runtime.retry import is_deterministic, is_transient
from nerflow.tasks.training.trainer import last_complete_checkpoint


@pytest.fixture
def job(tiny_bert, tmp_path):
    from conftest import tiny_run_settings

    data = write_synthetic_dataset(tmp_path / "synthetic")
    settings = tiny_run_settings(
        tiny_bert,
        tmp_path / "runs",
        dataset={"source": str(data), "max_train_samples": None, "max_eval_samples": None},
        train={"epochs": 2, "batch_size": 16, "learning_rate": 5e-3},
        records={"save_total_limit": 3},
    )
    _, tokenized = prepare(settings)
    return train_job(settings, tokenized, tmp_path / "runs" / "run", "run")


def test_a_truncated_newest_checkpoint_is_removed_and_training_resumes_from_the_one_before(job):
    first = nerflow.tasks.train.train_model(job)
    checkpoints = job.checkpoint_dir
    assert all(is_sealed(p) for p in checkpoints.glob("checkpoint-*"))
    # A power loss or a kill during the last save: the weights file is cut short.
    newest = checkpoints / "checkpoint-20"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.rmtree(first.path)

    again = nerflow.tasks.train.train_model(job)
    assert again.resumed_from == "checkpoint-10"
    assert is_sealed(newest) and Path(again.path, "model.safetensors").is_file()  # epoch 2 saved again, whole


def test_a_checkpoint_without_its_seal_is_never_resumed_from(job, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    complete = checkpoints / "checkpoint-5"
    complete.mkdir(parents=True)
    (complete / "model.safetensors").write_bytes(b"x" * 10)
    from nerflow.tasks.runtime.files import seal

    seal(complete)
    cut = shutil.copytree(complete, checkpoints / "checkpoint-9")
    (cut / SEAL).unlink()  # killed before the seal was written
    assert last_complete_checkpoint(checkpoints) == complete
    assert not cut.exists()


def test_a_failed_save_is_retried_once(job, monkeypatch, caplog):
    from transformers import Trainer

    import nerflow.tasks.training.trainer

    monkeypatch.setattr(nerflow.tasks.training.trainer, "SAVE_RETRY_DELAY_S", 0)
    save = Trainer._save_checkpoint
    failures = []

    def full_disk_once(self, model, trial):
        if not failures:
            failures.append(self.state.global_step)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", full_disk_once)
    with caplog.at_level(logging.WARNING, logger="nerflow.tasks.training.trainer"):
        ref = nerflow.tasks.train.train_model(job)
    assert failures == [10] and ref.best_checkpoint in ("checkpoint-10", "checkpoint-20")
    assert all(is_sealed(p) for p in job.checkpoint_dir.glob("checkpoint-*"))
    assert any("saving checkpoint-10 failed" in r.getMessage() for r in caplog.records)


def wrapped(inner: BaseException) -> OSError:
    """What transformers raises when the Hub cannot be reached: an OSError caused by httpx's error."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from e
    except OSError as outer:
        return outer


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("Name or service not known"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadTimeout("timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_errors_are_transient_even_when_wrapped(error):
    from nerflow.tasks.runtime.retry import network_retry_condition, unless_deterministic

    assert is_transient(error) and is_transient(wrapped(error))
    assert not is_deterministic(wrapped(error))
    state = FailedState(wrapped(error))
    assert network_retry_condition(None, None, state) and unless_deterministic(None, None, state)


def test_a_hub_cache_miss_is_transient_online_and_final_offline(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def miss():
        try:
            raise httpx.ConnectError("Name or service not known")
        except httpx.ConnectError as e:
            try:
                raise LocalEntryNotFoundError("cannot reach the Hub and the file is not cached") from e
            except LocalEntryNotFoundError as miss:
                return wrapped(miss)

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert is_transient(miss())  # the Hub did not answer: worth another try
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not is_transient(miss()) and not is_transient(wrapped(LocalEntryNotFoundError("not cached")))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        IndexError("index 7 is out of bounds for dimension 0 with size 7"),
        ValueError("compute.precision: bf16 was asked for but this GPU does not support it"),
    ],
    ids=["oom", "index", "bad-setting"],
)
def test_errors_a_retry_would_repeat_are_not_retried(error):
    from nerflow.tasks.runtime.retry import unless_deterministic

    assert is_deterministic(error) and not is_transient(error)
    assert not unless_deterministic(None, None, FailedState(error))


def test_http_status_decides_for_service_errors():
    request = httpx.Request("GET", "https://hub.example/api/models/x")
    for status, transient in ((503, True), (429, True), (404, False), (403, False)):
        error = httpx.HTTPStatusError("status", request=request, response=httpx.Response(status, request=request))
        assert is_transient(error) is transient and is_deterministic(error) is not transient


class FailedState:
    """The part of a Prefect state that retry conditions read."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self, raise_on_failure: bool = True):
        return self.exc


@pytest.mark.slow  # a Prefect server
def test_a_late_second_crash_report_does_not_start_a_second_process():
    """A killed run is reported Crashed by its runner and, later, by the worker: the second report
    lands after the restart was scheduled and must not schedule it again (two processes of one flow
    run would race for its folder). A real second crash, after the restart ran, is not restarted; nor
    is a crashed run of another flow (the recovery flow's parameter names any flow run)."""
    from prefect import flow, get_client
    from prefect.states import Crashed, Running

    from nerflow.flows.recovery import restart_crashed_run
    from prefect_db import seeded_test_harness

    @flow(name="finetune_ner")
    def training():
        pass

    @flow(name="someone-elses-flow")
    def other():
        pass

    def deployment_run(client, f):
        """A run of a deployment of f, as the worker starts them (recovery restarts only those)."""
        deployment = client.create_deployment(
            flow_id=client.create_flow(f), name="recovery-test", entrypoint="tests:unused"
        )
        return client.create_flow_run_from_deployment(deployment)

    with seeded_test_harness(), get_client(sync_client=True) as client:
        foreign = deployment_run(client, other)
        client.set_flow_run_state(foreign.id, Crashed(message="killed"), force=True)
        assert "not restarted" in restart_crashed_run(str(foreign.id)).reason
        assert client.read_flow_run(foreign.id).state.type.value == "CRASHED"
        loose = client.create_flow_run(training)  # no deployment: no worker could start it again
        client.set_flow_run_state(loose.id, Crashed(message="killed"), force=True)
        assert not restart_crashed_run(str(loose.id)).restarted
        run = deployment_run(client, training)
        crash = lambda: client.set_flow_run_state(run.id, Crashed(message="killed"), force=True)  # noqa: E731
        client.set_flow_run_state(run.id, Running(), force=True)
        crash()
        assert restart_crashed_run(str(run.id)).restarted
        crash()  # the worker's late report about the attempt that was already replaced
        late = restart_crashed_run(str(run.id))
        assert not late.restarted and "under way" in late.reason
        client.set_flow_run_state(run.id, Running(), force=True)  # the restart runs, then crashes for real
        crash()
        again = restart_crashed_run(str(run.id))
        assert not again.restarted and "already restarted" in again.reason
        restarts = [
            s
            for s in client.read_flow_run_states(run.id)
            if s.type.value == "SCHEDULED" and (s.message or "").startswith("nerflow: restarted")
        ]
        assert len(restarts) == 1


def test_runs_that_start_together_on_a_fresh_server_share_its_result_storage(monkeypatch):
    """Two runs start at once on a server with no result storage block yet: both look it up, find
    nothing, and save it. The one that saves second goes on with the first one's block instead of
    failing (three `nerflow train` processes on one fresh server hit this)."""
    from nerflow.tasks.runtime.caching import RESULT_STORAGE, JsonResultStorage, ensure_result_storage
    from prefect_db import seeded_test_harness

    name = RESULT_STORAGE.split("/", 1)[1]
    load = JsonResultStorage.load
    looked_up = []

    def load_before_the_other_run_saved(*args, **kwargs):
        looked_up.append(args[0])
        if len(looked_up) == 1:  # the lookup ran before the other run's save landed
            raise ValueError(f"Unable to find block document named {name}")
        return load(*args, **kwargs)

    with seeded_test_harness():
        ensure_result_storage()  # the other run
        monkeypatch.setattr(JsonResultStorage, "load", load_before_the_other_run_saved)
        ensure_result_storage()  # this run: finds none, saves, finds the name taken
        assert looked_up == [name, name]
        assert isinstance(load(name, _sync=True), JsonResultStorage)
