"""Failure alerts: a failed or crashed training run tells someone, through a Prefect notification block.

The flow's on_failure and on_crashed hooks send one message per run: the run's name, the task that
failed, the first line of the error and a link to the run. A run killed outright (SIGKILL: no hook can
run in its process) is scheduled again by the crash-recovery flow, which sends the alert when it gives
up. Blocks are the notification family Prefect has (webhooks, Slack, Teams, e-mail); `nerflow alerts
create --webhook URL` saves the default one, a JSON webhook: {"subject": ..., "body": ...}.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_client

log = logging.getLogger(__name__)
DEFAULT_BLOCK = "custom-webhook/nerflow-alerts"


def failed_tasks(flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    failed = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), task_run_filter=TaskRunFilter(state=failed)
        )
    return sorted({r.name.rsplit("-", 1)[0] for r in runs})


def alert_text(flow_run, state, tasks: list[str]) -> tuple[str, str]:
    """(subject, body) of the alert: run, state, failed task, first line of the error, link."""
    from prefect.utilities.urls import url_for

    message = (state.message or "").strip()
    first_line = message.splitlines()[0] if message else "(no message)"
    body = "\n".join(
        [
            f"run: {flow_run.name}",
            f"state: {state.name}",
            f"failed task: {', '.join(tasks) or '(none: the flow itself)'}",
            f"error: {first_line}",
            f"link: {url_for(flow_run) or '(no UI for this server)'}",
        ]
    )
    return f"nerflow run {flow_run.name} {state.name.lower()}", body


def notify(block_name: str | None, subject: str, body: str) -> bool:
    """Send through the named notification block; False (and a warning) without one."""
    if not block_name:
        return False
    from prefect.blocks.core import Block

    try:
        block = Block.load(block_name, _sync=True)
    except ValueError:
        log.info("no notification block %r: no alert sent", block_name)
        return False
    block.notify(body=body, subject=subject, _sync=True)
    return True


def alert_block(parameters: dict[str, Any]) -> str | None:
    settings = parameters.get("settings") or {}
    alerts = settings.get("alerts") if isinstance(settings, dict) else getattr(settings, "alerts", None)
    if alerts is None:
        return DEFAULT_BLOCK
    return alerts.get("notification_block") if isinstance(alerts, dict) else alerts.notification_block


def on_run_failure(flow, flow_run, state) -> None:
    """Prefect flow hook (on_failure, on_crashed): one alert for the run. Never raises: an alert that
    cannot be sent must not change how the run ended."""
    try:
        subject, body = alert_text(flow_run, state, failed_tasks(flow_run.id))
        if notify(alert_block(flow_run.parameters or {}), subject, body):
            log.info("alert sent for run %s", flow_run.name)
    except Exception as e:  # the run's outcome stands; the log says why no alert went out
        log.warning("could not send the alert for run %s: %s", flow_run.name, type(e).__name__)


def create_webhook_block(url: str, name: str = "nerflow-alerts") -> str:
    """Save the default alert block: POST {"subject": ..., "body": ...} as JSON to url."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name="nerflow", url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block.save(name, overwrite=True, _sync=True)
    return f"custom-webhook/{name}"
