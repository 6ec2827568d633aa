"""A run starter is not an operator: each attack of the security audit (#21), run as a run starter
would run it, through a real `nerflow serve` stack (server with the credentials it generated, the `gpu`
process pool, the deployments, a worker whose environment holds the operator's policy).

The docker and kubernetes variants of the job-variable attack are in test_pool_templates.py (their
templates rendered by Prefect's own code) and here (the server refusing them for deployments on those
pools)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import SAMPLE_DIR
from serve_stack import api, finished_run, run_logs, wait_for

# A real Prefect server, pool, deployments and worker: the one test_ui.py drives (conftest.py's
# secured_stack; SAME_WORKER_AS runs both files in one pytest-xdist worker).
pytestmark = pytest.mark.slow

TRAINING = "finetune_ner/wikiann-bn"
BATCH = "predict_ner/batch"


@pytest.fixture
def stack(secured_stack):
    return secured_stack


def call(stack, method: str, path: str, body=None, auth: str | None = "stack"):
    return api(stack["api"], method, path, body, auth=stack["auth"] if auth == "stack" else auth)


def start(stack, deployment: str, parameters: dict, job_variables: dict | None = None) -> tuple[int, dict]:
    status, found = call(stack, "GET", f"/deployments/name/{deployment}")
    assert status == 200, found
    body = {"parameters": parameters, **({"job_variables": job_variables} if job_variables is not None else {})}
    return call(stack, "POST", f"/deployments/{found['id']}/create_flow_run", body)


def settings(stack, name: str, **sections) -> dict:
    """The training deployment's settings with a seed of the run's own and sections changed."""
    data = json.loads(json.dumps(stack["settings"]))
    data["train"]["seed"] = zlib.crc32(name.encode()) % 10_000
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def refused(stack, deployment: str, parameters: dict) -> str:
    """Start a run and return its Failed "Invalid input" message (it must end that way)."""
    return refused_run(stack, deployment, parameters)["state"]["message"]


def refused_run(stack, deployment: str, parameters: dict) -> dict:
    status, run = start(stack, deployment, parameters)
    assert status == 201, run
    final = finished_run(stack, run["id"])
    assert final["state_type"] == "FAILED" and final["state"]["name"] == "Invalid input", final["state"]
    return final


OUTSIDE = Path("/var/tmp") / f"nerflow-outside-{uuid.uuid4().hex[:8]}"  # outside every allowed root


# ------------------------------------------------------------------------------ 1. job variables


def test_job_variables_can_set_neither_the_command_nor_the_environment(stack):
    marker = stack["root"] / "command-ran"
    for job_variables in (
        {"command": f"sh -c 'id > {marker}'"},
        {"env": {"NERFLOW_ALLOWED_ROOTS": "/"}},
        {"env.NERFLOW_ALLOWED_ROOTS": "/"},
        {"working_dir": "/"},
    ):
        status, body = start(
            stack, TRAINING, {"settings": settings(stack, "jv", output_dir=str(OUTSIDE))}, job_variables
        )
        assert status == 422 and "Additional properties are not allowed" in json.dumps(body), (
            job_variables,
            status,
            body,
        )
    # The same through Prefect's own CLI, as a run starter types it.
    cli = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", TRAINING, "-jv", f"command=sh -c 'id > {marker}'"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode != 0 and "Additional properties are not allowed ('command' was unexpected)" in " ".join(
        (cli.stdout + cli.stderr).split()
    )
    time.sleep(3)
    assert not marker.exists()
    # With no job variables, the worker's policy holds for the parameters themselves.
    message = refused(stack, TRAINING, {"settings": settings(stack, "outside", output_dir=str(OUTSIDE))})
    assert f"output_dir={str(OUTSIDE)!r} is outside the allowed folders" in message
    assert not OUTSIDE.exists()


def test_docker_and_kubernetes_pools_refuse_what_the_operator_fixes(stack):
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from nerflow.flows.cli.pools import create_pool

    api = {PREFECT_API_URL: stack["api"], PREFECT_API_AUTH_STRING: stack["auth"]}
    with temporary_settings(api), get_client(sync_client=True) as client:
        flow_id = client.read_flow_by_name("finetune_ner").id
        for kind in ("docker", "kubernetes"):
            create_pool(f"secured-{kind}", kind)
            client.create_deployment(
                flow_id=flow_id,
                name=f"on-{kind}",
                work_pool_name=f"secured-{kind}",
                entrypoint="nerflow.flows.finetune:finetune_ner",
            )
    attacks = {
        "docker": [{"image": "attacker/image"}, {"privileged": True}, {"volumes": ["/:/host"]}, {"command": "id"},
                   {"env": {"NERFLOW_ALLOWED_ROOTS": "/"}}, {"container_create_kwargs": {"privileged": True}}],
        "kubernetes": [{"image": "attacker/image"}, {"namespace": "kube-system"}, {"cluster_config": {"context_name": "admin"}},
                       {"command": "id"}, {"env": {"NERFLOW_ALLOWED_ROOTS": "/"}}, {"tolerations": [{"operator": "Exists"}]}],
    }  # fmt: skip
    for kind, variants in attacks.items():
        for job_variables in variants:
            status, body = start(stack, f"finetune_ner/on-{kind}", {}, job_variables)
            assert status == 422 and "Additional properties are not allowed" in json.dumps(body), (
                kind,
                job_variables,
                body,
            )
    status, allowed = start(stack, "finetune_ner/on-kubernetes", {}, {"gpus_per_pod": 2})  # what a run may change
    assert status == 201, allowed
    call(stack, "DELETE", f"/flow_runs/{allowed['id']}")


# ----------------------------------------------------------------------- 2. secrets to any server


class Recorder:
    """An HTTP server that records every request it gets (headers included): the attacker's."""

    def __init__(self) -> None:
        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_run_settings_cannot_send_a_secret_block_to_a_server_of_their_choosing(stack):
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    token = f"hf_e2e_{uuid.uuid4().hex}"
    with temporary_settings({PREFECT_API_URL: stack["api"], PREFECT_API_AUTH_STRING: stack["auth"]}):
        Secret(value=token).save("hf-token", overwrite=True)
    attacker = Recorder()
    try:
        run = refused_run(stack, TRAINING, {"settings": settings(
            stack, "mlflow-attack",
            tracking={"backends": ["mlflow"], "mlflow_tracking_uri": attacker.url, "mlflow_credentials_block": "hf-token"},
            publish={"hf_token_block": "unused"},
        )})  # fmt: skip
        time.sleep(2)
        assert attacker.requests == []
    finally:
        attacker.close()
    message = run["state"]["message"]
    assert f"tracking.mlflow_tracking_uri={attacker.url!r} is not an allowed MLflow server" in message
    assert "publish.hf_token_block='unused': this worker binds hub credentials to 'hf-token'" in message
    assert "tracking.mlflow_credentials_block='hf-token'" in message
    assert token not in json.dumps(run_logs(stack, run["id"]))


# ------------------------------------------------------------------------- 3. batch prediction


def test_batch_prediction_reads_and_writes_only_where_the_operator_allows(stack):
    model_dir = str(stack["root"] / "runs" / "some-run" / "model")
    # Every refusal of a run is listed in its one message: a place to read from and one to write to.
    message = refused(
        stack, BATCH, {"model_dir": model_dir, "input_path": "/etc/passwd", "output_path": "s3://anyone/out.jsonl"}
    )
    assert "input_path='/etc/passwd' is outside the allowed folders" in message and "model_dir" not in message
    assert "output_path='s3://anyone/out.jsonl' is outside the allowed S3 places (none; NERFLOW_ALLOWED_S3)" in message
    escape = OUTSIDE / "passwd.jsonl"
    message = refused(
        stack, BATCH, {"model_dir": model_dir, "input_path": str(SAMPLE_DIR / "test.jsonl"), "output_path": str(escape)}
    )
    assert f"output_path={str(escape)!r} is outside the allowed folders" in message and "input_path" not in message
    assert not OUTSIDE.exists()  # refused before anything is written


# -------------------------------------------------------------- 4. code, places, hosts in settings


def test_settings_that_name_code_places_or_hosts_stay_inside_the_policy(stack):
    message = refused(stack, TRAINING, {"settings": settings(
        stack, "everything",
        base_model={"name": "package:os", "trust_remote_code": True},
        tracking={"backends": ["mlflow"], "mlflow_tracking_uri": "http://attacker.example:5000"},
        publish={"targets": ["hub", "s3"], "hub_repo_id": "attacker/stolen", "s3_uri": "s3://attacker-bucket/runs"},
        train={"trainer_args": {"deepspeed": "/etc/ds_config.json"}},
        compute={"nnodes": 2, "rdzv_endpoint": "attacker.example:29500"},
    )})  # fmt: skip
    for why in (
        "base_model.name='package:os': package not in NERFLOW_ALLOWED_PACKAGES",
        "base_model.trust_remote_code=true: this worker runs no code shipped with a checkpoint",
        "tracking.mlflow_tracking_uri='http://attacker.example:5000' is not an allowed MLflow server",
        "publish.hub_repo_id='attacker/stolen': namespace 'attacker' is not allowed",
        "publish.s3_uri='s3://attacker-bucket/runs' is outside the allowed S3 places",
        "train.trainer_args.deepspeed='/etc/ds_config.json' is outside the allowed folders",
        "compute.rdzv_endpoint='attacker.example:29500' is not an allowed rendezvous",
    ):
        assert why in message, why


# ---------------------------------------------------------------------- 5. secrets over the API


def another_user(code: str, *args: str) -> subprocess.CompletedProcess:
    """Python code run as `nobody` when this suite runs as root (as in CI), with the system's Python
    (the project's venv is the operator's); as the same user otherwise, which still holds no credentials."""
    if os.geteuid() == 0 and Path("/usr/bin/python3").exists():
        command, options = ["/usr/bin/python3", "-c", code, *args], {"user": 65534, "group": 65534, "cwd": "/"}
    else:
        command, options = [sys.executable, "-c", code, *args], {}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **options)


READ_SECRETS = """
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/block_documents/filter", data=json.dumps({"include_secrets": True}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def test_serve_turns_auth_on_and_keeps_the_credentials_to_its_operator(stack):
    said = "".join(stack["proc"].startup_lines)
    auth_file = stack["root"] / "prefect-home" / "nerflow-api-auth"
    assert f"API auth on: user:password from {auth_file} (readable by you only)" in said
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack["root"] / "prefect-home" / "prefect.db").stat().st_mode) == 0o600
    other = another_user(READ_SECRETS, stack["api"])
    assert other.stdout.strip() == "401", other.stderr
    assert call(stack, "POST", "/block_documents/filter", {"include_secrets": True}, auth=None)[0] == 401
    assert call(stack, "POST", "/block_documents/filter", {"include_secrets": True})[0] == 200  # the operator


def test_a_local_runs_temporary_server_is_closed_to_other_local_users():
    """The server `nerflow train` starts when no Prefect API is configured (the same code path)."""
    from prefect.blocks.system import Secret
    from prefect.settings import get_current_settings

    from nerflow.flows.cli.serve import temporary_server_when_needed

    # A block name of its own: the database behind this server is the test session's, which later
    # `nerflow` processes of this worker read their Secret blocks from (a saved 'hf-token' would be theirs).
    block = f"local-secret-{uuid.uuid4().hex[:8]}"
    with temporary_server_when_needed() as use_server, use_server():
        Secret(value="hf_local_secret").save(block)
        other = another_user(READ_SECRETS, get_current_settings().api.url)
        assert other.stdout.strip() == "401", other.stderr
        assert Secret.load(block).get() == "hf_local_secret"  # this run's own client holds the credentials
    # The database behind it (this session's PREFECT_HOME) is its owner's alone.
    assert stat.S_IMODE((Path(os.environ["PREFECT_HOME"]) / "prefect.db").stat().st_mode) == 0o600


# ------------------------------------------------------------------------- 6. forged result records


class Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_forged_result_record_is_refused_and_never_run(stack):
    storage = stack["root"] / "prefect-home" / "storage"
    earlier = set(storage.glob("tokenize-*"))  # other runs on this stack tokenized with other settings
    parameters = {"settings": settings(stack, "forged", run_name="forged-1")}
    status, run = start(stack, TRAINING, parameters)
    assert status == 201 and finished_run(stack, run["id"])["state_type"] == "COMPLETED"
    (record,) = [p for p in storage.glob("tokenize-*") if p not in earlier and not p.name.endswith(".refused")]
    marker = stack["root"] / "payload-ran"
    forged = json.loads(record.read_text())
    forged["metadata"]["serializer"] = {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None}
    forged["result"] = base64.b64encode(pickle.dumps(Payload(f"touch {marker}"))).decode()
    record.write_text(json.dumps(forged))

    parameters["settings"]["run_name"] = "forged-2"
    status, run = start(stack, TRAINING, parameters)
    assert status == 201
    final = finished_run(stack, run["id"])
    assert final["state_type"] == "COMPLETED", final["state"]
    assert not marker.exists()
    # Logs reach the server a moment after the run's last state.
    wait_for(
        "the refusal in the run's log",
        lambda: any(
            "refused, not deserialized: it names the serializer" in line for line in run_logs(stack, run["id"])
        ),
        timeout_s=60,
    )
    assert record.with_name(record.name + ".refused").is_file()
    assert json.loads(record.read_text())["metadata"]["serializer"]["type"] == "json"  # rewritten by the step
