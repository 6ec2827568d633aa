"""The pool templates give a run starter no way to the worker: job variables that would set the command,
the environment, the image, privileges, volumes, the namespace or the cluster config are refused by the
Prefect server's own validation, and have no effect when rendered by each worker's own job
configuration (Prefect's process worker, prefect-docker, prefect-kubernetes). The process pool is also
attacked end to end through a real server and worker in test_security.py."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.schema_tools import ValidationError, validate

from nerflow.flows.cli.pools import POOL_TYPES, fix_operator_values, load_template

ATTACKS = {
    "command": "sh -c 'id > /tmp/owned'",
    "env": {"NERFLOW_ALLOWED_ROOTS": "/"},
    "env.NERFLOW_ALLOWED_ROOTS": "/",
    "image": "attacker/image:latest",
    "privileged": True,
    "volumes": ["/:/host"],
    "container_create_kwargs": {"privileged": True, "pid_mode": "host"},
    "namespace": "kube-system",
    "cluster_config": {"config": {}, "context_name": "admin"},
    "working_dir": "/",
    "labels": {"app": "trusted"},
    "tolerations": [{"operator": "Exists"}],
}


# prefect-docker and prefect-kubernetes, installed beside the venv's packages, not among them (Makefile).
POOL_WORKERS = Path(sys.prefix) / "pool-workers"


def configuration_class(kind: str):
    if kind == "process":
        from prefect.workers.process import ProcessJobConfiguration

        return ProcessJobConfiguration
    if POOL_WORKERS.is_dir() and str(POOL_WORKERS) not in sys.path:
        sys.path.append(str(POOL_WORKERS))
    if kind == "docker":
        from prefect_docker.worker import DockerWorkerJobConfiguration

        return DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    return KubernetesWorkerJobConfiguration


def server_validation(kind: str, job_variables: dict) -> str | None:
    """What the Prefect server says of a flow run's job variables (the check behind create_flow_run)."""
    try:
        validate(
            job_variables,
            load_template(kind)["variables"],
            raise_on_error=True,
            preprocess=True,
            ignore_required=False,
            allow_none_with_default=True,
        )
    except ValidationError as e:
        return str(e)
    return None


@pytest.mark.parametrize("kind", POOL_TYPES)
def test_the_server_refuses_job_variables_a_run_may_not_set(kind):
    for name, value in ATTACKS.items():
        refusal = server_validation(kind, {name: value})
        assert refusal and "Additional properties are not allowed" in refusal, (kind, name)
    assert server_validation(kind, {"name": "nightly", "stream_output": False}) is None


class NoClient:
    def __getattr__(self, name):
        raise AssertionError(f"the template needed the Prefect API ({name})")


NO_CLIENT = NoClient()


def rendered(kind: str, job_variables: dict):
    template = load_template(kind)
    # No block or variable placeholders to resolve: no API client is needed (nor started).
    config = asyncio.run(configuration_class(kind).from_template_and_values(template, job_variables, client=NO_CLIENT))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="attacked-run", flow_id=uuid.uuid4()))
    return config


@pytest.mark.parametrize("kind", POOL_TYPES)
def test_job_variables_past_the_server_change_nothing_the_operator_fixed(kind, monkeypatch):
    monkeypatch.setenv("NERFLOW_ALLOWED_ROOTS", "/srv/nerflow")  # the worker's own environment (process pool)
    plain, attacked = rendered(kind, {}), rendered(kind, ATTACKS)
    fixed = (
        "image",
        "privileged",
        "volumes",
        "container_create_kwargs",
        "namespace",
        "cluster_config",
        "working_dir",
        "job_manifest",
    )
    for field in fixed:
        if hasattr(plain, field):
            assert getattr(attacked, field) == getattr(plain, field) or field == "job_manifest", (kind, field)
    assert "owned" not in attacked.command and attacked.command == plain.command
    assert attacked.env.get("NERFLOW_ALLOWED_ROOTS") == plain.env.get("NERFLOW_ALLOWED_ROOTS") != "/"
    if kind == "kubernetes":
        container = attacked.job_manifest["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "nerflow-gpu:latest" and "owned" not in " ".join(container["args"])
        assert {"name": "NERFLOW_ALLOWED_ROOTS", "value": "/home/nerflow/work"} in container["env"]
        assert {"name": "NERFLOW_ALLOWED_ROOTS", "value": "/"} not in container["env"]
        assert attacked.job_manifest["metadata"]["namespace"] == "nerflow"
        assert (
            attacked.job_manifest["spec"]["template"]["spec"]["tolerations"]
            == plain.job_manifest["spec"]["template"]["spec"]["tolerations"]
        )


def test_what_a_run_may_set_reaches_the_job():
    config = rendered("kubernetes", {"gpus_per_pod": 4, "memory_limit": "96Gi"})
    limits = config.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": 4, "memory": "96Gi"}
    assert server_validation("kubernetes", {"gpus_per_pod": 64}) is not None  # bounded
    assert rendered("docker", {"mem_limit": "64g"}).mem_limit == "64g"


def test_the_operator_fixes_image_namespace_and_working_folder():
    k8s = fix_operator_values(
        load_template("kubernetes"), "kubernetes", {"image": "registry.team/nerflow:1.2", "namespace": "ml"}
    )
    assert (
        k8s["job_configuration"]["namespace"]
        == k8s["job_configuration"]["job_manifest"]["metadata"]["namespace"]
        == "ml"
    )
    assert (
        k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.team/nerflow:1.2"
    )
    assert (
        fix_operator_values(load_template("process"), "process", {"working_dir": "/srv/nerflow"})["job_configuration"][
            "working_dir"
        ]
        == "/srv/nerflow"
    )
    with pytest.raises(ValueError, match="takes \\['working_dir'\\] from its operator, not 'image'"):
        fix_operator_values(load_template("process"), "process", {"image": "x"})
