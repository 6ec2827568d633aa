"""Tracking end to end: a real `mlflow server` on 127.0.0.1 (SQLite store, local artifact folder) and
TensorBoard event files, read back through MLflow's REST API and TensorBoard's own event reader."""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from nerflow.flows.cli.serve import free_port, stop_process
from prefect_db import seeded_test_harness

pytestmark = pytest.mark.slow  # an MLflow server and a whole flow run


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with seeded_test_harness():
        yield


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    log = (root / "server.log").open("wb")
    # Without MLflow's job runner (huey consumers polling a queue: ~25 CPU seconds over this test), which
    # tracking never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield url
    stop_process(proc)


def rest(base: str, endpoint: str, **query):
    with urllib.request.urlopen(
        f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30
    ) as resp:
        return json.loads(resp.read())


def test_a_run_is_tracked_in_mlflow_and_tensorboard(tiny_settings, mlflow_server):
    from prefect.blocks.system import Secret
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nerflow.flows.finetune import finetune_ner
    from nerflow.tasks.reporting.trackers import flat_params

    Secret(value="nerflow-user:mlflow-s3cret-value").save("mlflow-credentials", overwrite=True)
    settings = tiny_settings(
        train={"epochs": 2},
        tracking={
            "backends": ["mlflow", "tensorboard"],
            "mlflow_tracking_uri": mlflow_server,
            "mlflow_experiment": "nerflow-e2e",
        },
        card={"model_name": "tiny-tracked"},
    )
    result = finetune_ner(settings=settings, return_state=True).result()
    run = rest(mlflow_server, "runs/get", run_id=result.mlflow_run_id)["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == result.run_name

    # Every run setting is a param (with the values of this run), secrets are not.
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    resolved = settings.model_copy(update={"run_name": result.run_name})
    assert set(flat_params(resolved)) <= set(params) and params["train.epochs"] == "2"
    assert not [k for k, v in params.items() if "mlflow-s3cret" in v]

    # Per-epoch history, word-level test scores overall and per entity.
    history = rest(mlflow_server, "metrics/get-history", run_id=result.mlflow_run_id, metric_key="epoch/val_f1")[
        "metrics"
    ]
    assert [m["step"] for m in history] == [1, 2]
    latest = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert latest["test/f1"] == pytest.approx(result.test_f1)
    metrics = json.loads(Path(result.metrics_path).read_text())
    for entity in metrics["word_level"]["test"]["per_entity"]:
        assert latest[f"test/{entity}/f1"] == pytest.approx(metrics["word_level"]["test"]["per_entity"][entity]["f1"])
    assert "eval_f1" in latest  # the Trainer's own live logger reported into the same run

    # The card and its pictures as artifacts; the published model as a registered version.
    card = {f["path"] for f in rest(mlflow_server, "artifacts/list", run_id=result.mlflow_run_id, path="card")["files"]}
    assert card == {"card/README.md", "card/training_curves.png", "card/confusion_matrix.png"}
    (version,) = rest(mlflow_server, "model-versions/search", filter="name='tiny-tracked'")["model_versions"]
    assert version["run_id"] == result.mlflow_run_id and version["version"] == result.mlflow_model_version == "1"
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags["nerflow.run"] == result.run_name and tags["dataset.revision"].startswith("sha256:")

    # TensorBoard: the Trainer's live curves and nerflow's per-epoch and test scalars, in the run folder.
    events = EventAccumulator(str(Path(result.run_dir) / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"eval/f1", "train/loss", "epoch/val_f1", "test/f1"} <= set(scalars)
    assert [e.step for e in events.Scalars("epoch/val_f1")] == [1, 2]
    assert not [p for p in Path(result.run_dir).rglob("*") if p.is_file() and b"mlflow-s3cret" in p.read_bytes()]
