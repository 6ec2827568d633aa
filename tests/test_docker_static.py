"""The GPU image and the compose stack, checked statically (no Docker engine here)."""

import re

import yaml

from conftest import REPO

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_builds_a_cuda_image_that_runs_as_non_root():
    steps = instructions(DOCKERFILE)
    assert steps[0][0] == "FROM" and "nvidia/cuda" in steps[0][1]
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    torch_install = runs.index('pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"')
    assert torch_install < runs.index('pip install ".[wandb,aws]"')  # CUDA torch before the project
    assert re.search(r"ARG TORCH_INDEX=https://download.pytorch.org/whl/cu\d+", DOCKERFILE)
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert "useradd" in runs
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "HF_HOME=/home/nerflow/.cache/huggingface" in env
    volumes = " ".join(arg for op, arg in steps if op == "VOLUME")
    assert "/home/nerflow/.cache/huggingface" in volumes
    copied = [arg.split()[0] for op, arg in steps if op == "COPY"]
    for needed in ("pyproject.toml", "flows/", "tasks/", "deployments/"):
        assert needed in copied
    assert not re.search(r"(HF_TOKEN|WANDB_API_KEY|AWS_SECRET_ACCESS_KEY)=\S", DOCKERFILE)


def test_compose_stack_server_on_postgres_and_gpu_worker():
    stack = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = stack["services"]
    assert {"postgres", "server", "deploy", "worker"} <= set(services)
    server = services["server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert all(p.startswith("127.0.0.1:") for p in server["ports"])  # the UI on loopback only
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    # A restarted server keeps its concurrency leases (on a volume) and the runs in flight.
    assert server["environment"]["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"].endswith("lease_storage.filesystem")
    assert any(v.endswith(":" + server["environment"]["PREFECT_HOME"]) for v in server["volumes"])
    assert server["restart"] == services["worker"]["restart"] == "unless-stopped"
    worker = services["worker"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert any(v.endswith("/.cache/huggingface") for v in worker["volumes"])
    assert worker["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    # The API requires credentials; every password comes from docker/.env (compose refuses to start
    # without it); the database is not published on the host; secrets are not handed to every run.
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert server["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH:?")
    for name in ("worker", "deploy"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH:?")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "ports" not in services["postgres"] and ":-prefect}" not in text
    assert not {"HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"} & set(worker["environment"])
    assert worker["environment"]["NERFLOW_ALLOWED_ROOTS"] == "/home/nerflow/work"
    assert services["deploy"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert "deployments/prefect.yaml" in " ".join(services["deploy"]["command"])


def test_pool_templates_are_valid_and_documented():
    import json

    from nerflow.flows.cli.pools import POOL_TYPES, load_template

    for kind in POOL_TYPES:
        raw = json.loads((REPO / "deployments" / "pools" / f"{kind}.json").read_text())
        assert "gpu" in raw["description"] and f"--type {kind}" in raw["description"]
        template = load_template(kind)
        referenced = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
        variables = template["variables"]
        assert referenced == set(variables["properties"]), kind  # every variable a run may set is used, no other
        # The server refuses any other job variable; command, env, image and the like are not variables.
        assert variables["additionalProperties"] is False
        assert (
            not {"command", "env", "image", "privileged", "volumes", "namespace", "cluster_config", "working_dir"}
            & referenced
        )


def test_kubernetes_pool_keeps_runs_on_a_volume_and_runs_locked_down():
    import json

    template = json.loads((REPO / "deployments" / "pools" / "kubernetes.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    # Run folders, checkpoints and caches outlive the pod: the work folder is a claim, not pod disk.
    assert container["workingDir"] == "/home/nerflow/work" and claims[mounts["/home/nerflow/work"]] == "nerflow-work"
    assert claims[mounts["/home/nerflow/.cache/huggingface"]] == "nerflow-hf-cache"
    assert container["resources"]["limits"]["memory"] == "{{ memory_limit }}"
    assert pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and container["securityContext"]["allowPrivilegeEscalation"] is False
    )
    assert {"name": "NERFLOW_ALLOWED_ROOTS", "value": "/home/nerflow/work"} in container["env"]  # the operator's policy
    variables = template["variables"]["properties"]
    assert {"gpus_per_pod", "memory_limit"} <= set(variables) and all(variables[v]["description"] for v in variables)
    assert "work_claim" not in variables and "tolerations" not in variables  # the operator's, not a run's
