"""Work pools for nerflow's GPU deployments, created from the documented templates in deployments/pools/."""

from __future__ import annotations

import json
from pathlib import Path

POOL_TYPES = ("process", "docker", "kubernetes")
TEMPLATES = Path(__file__).resolve().parent.parent / "deployments" / "pools"


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


def create_pool(
    name: str,
    pool_type: str,
    overwrite: bool = False,
    concurrency_limit: int | None = None,
    defaults: dict | None = None,
) -> str:
    """Create (or update) the work pool through the Prefect API; returns 'created' or 'updated'.

    `defaults` sets the default of template variables, e.g. {"working_dir": "/data/nerflow"}.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    template = load_template(pool_type)
    properties = template["variables"]["properties"]
    for key, value in (defaults or {}).items():
        if key not in properties:
            raise ValueError(f"{pool_type} pool template has no variable {key!r}; it has {sorted(properties)}")
        properties[key]["default"] = value
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template, concurrency_limit=concurrency_limit)
            )
            return "created"
        except ObjectAlreadyExists:
            if not overwrite:
                raise
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=concurrency_limit))
            return "updated"
