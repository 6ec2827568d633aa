"""The work queues of the training pool that nerflow relies on: `training` (one training at a time) and
`sweep` (trials of a sweep, limited per sweep). `nerflow pool create` makes the first, a sweep the second."""

from __future__ import annotations

# The training deployment's work queue: one training at a time per pool. The server counts the queue's
# running flow runs in its database, so unlike a deployment concurrency limit (a lease the flow run must
# renew), the limit holds through a server restart without cancelling the run that holds it.
TRAINING_QUEUE = "training"
TRAINING_CONCURRENCY = 1
SWEEP_QUEUE = "sweep"  # sweep trials started as deployment runs (nerflow.flows.sweep), limited per sweep


def ensure_queue(client, pool: str, queue: str, concurrency: int) -> None:
    """A work queue of the pool with this concurrency limit (created, or its limit reset)."""
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.create_work_queue(queue, work_pool_name=pool, concurrency_limit=concurrency)
    except ObjectAlreadyExists:
        found = client.read_work_queue_by_name(queue, work_pool_name=pool)
        client.update_work_queue(found.id, concurrency_limit=concurrency)
