"""Failure alerts: a failed or crashed training run tells someone, through a Prefect notification block.

The flow's on_failure and on_crashed hooks send one message per run: the run's name, the task that
failed, the first line of the error and a link to the run. A run killed outright (SIGKILL: no hook can
run in its process) is scheduled again by the crash-recovery flow, which sends the alert when it gives
up. Blocks are the notification family Prefect has (webhooks, Slack, Teams, e-mail); `nerflow alerts
create --webhook URL` saves the default one, a JSON webhook: {"subject": ..., "body": ...}.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import get_client

log = logging.getLogger(__name__)
DEFAULT_BLOCK = "custom-webhook/nerflow-alerts"


def failed_tasks(flow_run_id, wait_s: float = 10.0) -> list[str]:
    """Names of the run's failed tasks. Task states reach the server as events, recorded a moment
    later, so a run that just failed may not show its failed task yet: ask again for up to wait_s."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    failed = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(state=failed),
            )
            if runs or time.monotonic() > deadline:
                return sorted({r.name.rsplit("-", 1)[0] for r in runs})
            time.sleep(0.5)


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


def load_notifier(block_name: str | None):
    """The named notification block, or None (logged) when there is none."""
    if not block_name:
        return None
    from prefect.blocks.core import Block

    try:
        return Block.load(block_name, _sync=True)
    except ValueError:
        log.info("no notification block %r: no alert sent", block_name)
        return None


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
        notifier = load_notifier(alert_block(flow_run.parameters or {}))
        if notifier is not None:
            subject, body = alert_text(flow_run, state, failed_tasks(flow_run.id))
            notifier.notify(body=body, subject=subject, _sync=True)
            log.info("alert sent for run %s", flow_run.name)
    except Exception as e:  # the run's outcome stands; the log says why no alert went out
        log.warning("could not send the alert for run %s: %s", flow_run.name, type(e).__name__)


def create_webhook_block(url: str, name: str = "nerflow-alerts") -> str:
    """Save the default alert block: POST {"subject": ..., "body": ...} as JSON to url."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="nerflow", url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    block.save(name, overwrite=True, _sync=True)
    return f"custom-webhook/{name}"
