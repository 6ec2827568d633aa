"""Crash recovery: a training flow run that crashed (its process killed: out of memory, a preempted node,
a lost worker) is scheduled again, once, as the same flow run.

The same flow run keeps its run folder (the folder name comes from the flow run, see
flows.finetune.resolve_run_name), so the new attempt resumes from the last complete epoch checkpoint
instead of starting over. deployments/prefect.yaml runs this flow on every `prefect.flow-run.Crashed`
event of the training deployment; a run that crashes again after its restart is left Crashed.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_client
from prefect.client.schemas.objects import StateType
from prefect.logging import get_run_logger
from prefect.states import Scheduled
from pydantic import BaseModel


class RecoveryResult(BaseModel):
    flow_run_id: str
    restarted: bool
    reason: str


RESTART_MESSAGE = "nerflow: restarted after a crash"
TRAINING_FLOW = "finetune_ner"


def restart_crashed_run(flow_run_id: str, max_restarts: int = 1) -> RecoveryResult:
    """Schedule a crashed flow run again if it has been restarted fewer than max_restarts times.

    A killed run can be reported Crashed twice (by the process that ran it and, later, by the worker
    that started that process), the second time after its restart was scheduled. Restarts this flow
    scheduled are counted in the run's state history: while one has not reached Running yet, a crash
    report is about the attempt it replaced, and nothing is done."""
    run_id = UUID(flow_run_id.removeprefix("prefect.flow-run."))
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        # A run starter may name any flow run here: only nerflow's training runs are ever restarted.
        if (flow_name := client.read_flow(run.flow_id).name) != TRAINING_FLOW:
            return RecoveryResult(flow_run_id=str(run_id), restarted=False, reason=f"a run of {flow_name!r}, not of {TRAINING_FLOW!r}: not restarted")
        state = run.state.type if run.state else None
        if state != StateType.CRASHED:
            return RecoveryResult(flow_run_id=str(run_id), restarted=False, reason=f"the run is {state}, not crashed")
        restarts = sum(
            s.type == StateType.SCHEDULED and (s.message or "").startswith(RESTART_MESSAGE) for s in client.read_flow_run_states(run_id)
        )
        # run_count counts the attempts that reached Running: 1 for the first, 2 after one restart.
        if restarts >= run.run_count:
            return RecoveryResult(flow_run_id=str(run_id), restarted=False, reason="a late crash report: its restart is under way")
        if run.run_count > max_restarts:
            give_up_alert(run)
            return RecoveryResult(flow_run_id=str(run_id), restarted=False, reason=f"already restarted after {run.run_count} attempts")
        message = f"{RESTART_MESSAGE} (attempt {run.run_count + 1}); resumes from its last checkpoint"
        client.set_flow_run_state(run_id, Scheduled(message=message), force=True)
    return RecoveryResult(flow_run_id=str(run_id), restarted=True, reason=message)


def give_up_alert(run) -> None:
    """The run crashed again after its restart: a person is needed (the run's own hooks could not run)."""
    from flows.alerts import alert_block, alert_text, load_notifier

    notifier = load_notifier(alert_block(run.parameters or {}))
    if notifier is not None:
        subject, body = alert_text(run, run.state, [])
        notifier.notify(body=body + "\nrestarted once already: not restarted again", subject=subject, _sync=True)


@flow(name="recover_crashed_run", description="Schedule a crashed training run again, once; it resumes from its last checkpoint.")
def recover_crashed_run(flow_run_id: str, max_restarts: int = 1) -> RecoveryResult:
    result = restart_crashed_run(flow_run_id, max_restarts)
    get_run_logger().info("flow run %s: %s", result.flow_run_id, result.reason)
    return result
