"""Recovery of training runs that died: killed (out of memory, a preempted node) or gone silent (the
node or the worker vanished, and nothing was left to report it).

A run that dies with something left to say is reported Crashed; one whose node vanished keeps its
Running state forever, holding the `training` queue's only slot. Prefect's own machinery finds both:
every flow run sends heartbeats (`prefect.flow-run.heartbeat`, PREFECT_FLOWS_HEARTBEAT_FREQUENCY), and
the crash-recovery deployment in deployments/prefect.yaml has two triggers, an event trigger on
`prefect.flow-run.Crashed` and a proactive one on heartbeats that stop coming, each for every run of
the training flows, whatever deployment started it. Both run this flow, which schedules the run again,
once, as the same flow run: the same run folder, so the new attempt resumes from its last checkpoint,
and the queue slot is free until it starts. A sweep trial that ran as a subflow is recovered by
restarting the sweep's own run (its finished trials are reused, the interrupted one resumes).
"""

from __future__ import annotations

from typing import Literal
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


RESTART_MESSAGE = "nerflow: restarted"
TRAINING_FLOWS = ("finetune_ner", "sweep_ner")


def recovery_target(client, run):
    """The run to schedule again: the run itself if a deployment started it; for a subflow (a sweep's
    trial), the deployment run it belongs to; None if nothing a worker can start again holds it."""
    while run.deployment_id is None and run.parent_task_run_id is not None:
        run = client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)
    return run if run.deployment_id is not None else None


Reason = Literal["crashed", "silent"]


def restart_crashed_run(flow_run_id: str, max_restarts: int = 1, reason: Reason = "crashed") -> RecoveryResult:
    """Schedule a dead training run again if it has been restarted fewer than max_restarts times.

    `reason` is "crashed" (it was reported Crashed) or "silent" (its heartbeats stopped while it was
    Running). A killed run can be reported Crashed twice (by its own process and, later, by the worker),
    the second time after its restart was scheduled; restarts this flow scheduled are counted in the
    state history, and while one has not reached Running yet, a report is about the attempt it
    replaced, and nothing is done."""
    run_id = UUID(flow_run_id.removeprefix("prefect.flow-run."))
    with get_client(sync_client=True) as client:
        found = client.read_flow_run(run_id)
        run = recovery_target(client, found)
        if run is None:
            return RecoveryResult(
                flow_run_id=str(run_id), restarted=False, reason="no deployment run holds it: nothing to schedule again"
            )
        # A run starter may name any flow run here: only nerflow's training runs are ever restarted.
        if (flow_name := client.read_flow(run.flow_id).name) not in TRAINING_FLOWS:
            return RecoveryResult(
                flow_run_id=str(run.id),
                restarted=False,
                reason=f"a run of {flow_name!r}, not of {' or '.join(TRAINING_FLOWS)}: not restarted",
            )
        state = run.state.type if run.state else None
        # A crashed trial of a sweep that still runs is the sweep's to retry; a silent run that ended is fine.
        if state != (StateType.CRASHED if reason == "crashed" else StateType.RUNNING):
            return RecoveryResult(
                flow_run_id=str(run.id), restarted=False, reason=f"the run is {state}: nothing to recover"
            )
        restarts = sum(
            s.type == StateType.SCHEDULED and (s.message or "").startswith(RESTART_MESSAGE)
            for s in client.read_flow_run_states(run.id)
        )
        # run_count counts the attempts that reached Running: 1 for the first, 2 after one restart.
        if restarts >= run.run_count:
            return RecoveryResult(
                flow_run_id=str(run.id), restarted=False, reason="a late report: its restart is under way"
            )
        if run.run_count > max_restarts:
            give_up_alert(run)
            return RecoveryResult(
                flow_run_id=str(run.id), restarted=False, reason=f"already restarted after {run.run_count} attempts"
            )
        why = (
            "after a crash"
            if reason == "crashed"
            else "after its heartbeats stopped (its process, worker or node is gone)"
        )
        message = f"{RESTART_MESSAGE} {why} (attempt {run.run_count + 1}); resumes from its last checkpoint"
        # Running -> Scheduled directly for a silent run: its queue slot is free at once, and no Crashed
        # event asks the other trigger to restart it a second time.
        client.set_flow_run_state(run.id, Scheduled(message=message), force=True)
    return RecoveryResult(flow_run_id=str(run.id), restarted=True, reason=message)


def give_up_alert(run) -> None:
    """The run died again after its restart: a person is needed (the run's own hooks could not run)."""
    from nerflow.flows.alerts import alert_block, alert_text, load_notifier

    notifier = load_notifier(alert_block(run.parameters or {}))
    if notifier is not None:
        subject, body = alert_text(run, run.state, [])
        notifier.notify(body=body + "\nrestarted once already: not restarted again", subject=subject, _sync=True)


@flow(
    name="recover_crashed_run",
    description=(
        "Schedule a dead training run (crashed, or its heartbeats stopped) again, once; it resumes from "
        "its last checkpoint."
    ),
)
def recover_crashed_run(flow_run_id: str, max_restarts: int = 1, reason: Reason = "crashed") -> RecoveryResult:
    result = restart_crashed_run(flow_run_id, max_restarts, reason)
    get_run_logger().info("flow run %s: %s", result.flow_run_id, result.reason)
    return result
