"""Work pools for nerflow's GPU deployments, created from the documented templates in deployments/pools/.

A template splits what the operator fixes (`job_configuration`: command, environment, image, volumes,
namespace, privileges) from what a run may change (`variables`, with `additionalProperties: false`, so
the server refuses any other job variable when a run is created). `create_pool` writes the operator's
few choices (working folder, image, namespace) into the fixed part."""

from __future__ import annotations

import json

from nerflow.deployments import POOL_TEMPLATES
from nerflow.flows.queues import TRAINING_CONCURRENCY, TRAINING_QUEUE, ensure_queue

POOL_TYPES = ("process", "docker", "kubernetes")
TEMPLATES = POOL_TEMPLATES


def load_template(pool_type: str) -> dict:
    if pool_type not in POOL_TYPES:
        raise ValueError(f"pool type must be one of {POOL_TYPES}, not {pool_type!r}")
    path = TEMPLATES / f"{pool_type}.json"
    template = json.loads(path.read_text(encoding="utf-8"))
    template.pop("description", None)  # documentation for people, not part of Prefect's schema
    for key in ("job_configuration", "variables"):
        if key not in template:
            raise ValueError(f"{path}: a base job template needs {key!r}")
    return template


# The operator's choices `nerflow pool create` takes, per pool type: where in the fixed part each goes.
OPERATOR_VALUES = {
    "process": {"working_dir": [("working_dir",)]},
    "docker": {"image": [("image",)]},
    "kubernetes": {
        "image": [("job_manifest", "spec", "template", "spec", "containers", 0, "image")],
        "namespace": [("namespace",), ("job_manifest", "metadata", "namespace")],
    },
}


def fix_operator_values(template: dict, pool_type: str, values: dict) -> dict:
    """Write the operator's values (e.g. {"working_dir": "/data/nerflow"}) into the job configuration."""
    places = OPERATOR_VALUES[pool_type]
    for key, value in values.items():
        if key not in places:
            raise ValueError(f"a {pool_type} pool takes {sorted(places)} from its operator, not {key!r}")
        for path in places[key]:
            node = template["job_configuration"]
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
    return template


def create_pool(
    name: str,
    pool_type: str,
    overwrite: bool = False,
    concurrency_limit: int | None = None,
    fixed: dict | None = None,
) -> str:
    """Create (or update) the work pool through the Prefect API; returns 'created' or 'updated'.

    `fixed` holds the operator's values for the template's fixed part (OPERATOR_VALUES).
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    template = fix_operator_values(load_template(pool_type), pool_type, fixed or {})
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type=pool_type, base_job_template=template, concurrency_limit=concurrency_limit
                )
            )
            outcome = "created"
        except ObjectAlreadyExists:
            if not overwrite:
                raise
            client.update_work_pool(
                name, WorkPoolUpdate(base_job_template=template, concurrency_limit=concurrency_limit)
            )
            outcome = "updated"
        ensure_queue(client, name, TRAINING_QUEUE, TRAINING_CONCURRENCY)
    return outcome
