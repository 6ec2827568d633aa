"""publish: a quality gate, then the Hugging Face Hub, S3 and/or the local run folder.

Publishing is keyed on what is published, the model's content (nerflow.tasks.publishing.hub), and an
S3 upload is complete only with its manifest (nerflow.tasks.publishing.s3). Transient errors
(connection, timeout, 429, 5xx) are retried with exponential backoff and jitter; 401/403/404 fail at
once with what to fix. Tokens and keys are never logged or written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from nerflow.tasks.publishing.gate import GateDecision, quality_gate
from nerflow.tasks.publishing.hub import HubMovedOn, explain_hub_error, hub_api, hub_published_f1, publish_to_hub
from nerflow.tasks.publishing.s3 import publish_to_s3, s3_client, s3_published_f1
from nerflow.tasks.runtime.errors import PublishError
from nerflow.tasks.runtime.retry import NETWORK_STEP_TIMEOUT_S, describe_error
from nerflow.tasks.runtime.secrets import resolve_secret
from nerflow.tasks.settings import PublishSettings

log = logging.getLogger(__name__)


class PublishResult(BaseModel):
    published: bool
    gate: GateDecision
    local_path: str | None = None
    hub_commit_url: str | None = None
    hub_new_commit: bool | None = None
    s3_uri: str | None = None
    s3_new_upload: bool | None = None

    def location(self) -> str:
        return self.hub_commit_url or self.s3_uri or self.local_path or "(not published)"


def read_run(run_dir: Path) -> tuple[str, float]:
    """A finished run's id (its folder name) and word-level test F1, from its metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if not (run_dir / "model" / "config.json").is_file() or not metrics_path.is_file():
        raise PublishError(f"{run_dir}: not a finished nerflow run (needs model/ and metrics.json)")
    try:
        return run_dir.name, float(json.loads(metrics_path.read_text())["word_level"]["test"]["f1"])
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(
            f"{metrics_path}: not the metrics.json of a nerflow run ({type(e).__name__}: {str(e)[:120]})"
        ) from None


GATE_ATTEMPTS = 3  # how often the gate is decided again when another publisher got to the Hub first


def decide_gate(
    settings: PublishSettings, model_name: str, test_f1: float, token: str | None, client
) -> tuple[GateDecision, str | None]:
    """The quality gate's decision and the Hub commit it compared against (None: no Hub comparison)."""
    published_f1, published_at, read_at = None, None, None
    if settings.require_improvement:
        # The Hub card is the public face of the model; S3 manifests speak for S3-only setups.
        if "hub" in settings.targets:
            try:
                published_f1, published_at, read_at = hub_published_f1(hub_api(token), settings.hub_repo_id)
            except Exception as exc:
                raise explain_hub_error(exc, settings.hub_repo_id or "", settings.hf_token_block) or exc from None
        if published_f1 is None and client is not None:
            published_f1, published_at = s3_published_f1(client, settings.s3_uri, model_name)
    return quality_gate(test_f1, settings.min_f1, published_f1, settings.require_improvement, published_at), read_at


def publish_run(
    run_dir: Path, settings: PublishSettings, model_name: str, backoff_base_s: float = 1.0
) -> PublishResult:
    run_dir = Path(run_dir)
    run_id, test_f1 = read_run(run_dir)
    token = resolve_secret(settings.hf_token_block, "HF_TOKEN") if "hub" in settings.targets else None
    client = s3_client(settings) if "s3" in settings.targets else None
    for attempt in range(1, GATE_ATTEMPTS + 1):
        gate, read_at = decide_gate(settings, model_name, test_f1, token, client)
        result = PublishResult(published=gate.passed, gate=gate)
        if not gate.passed:
            return result
        if "local" in settings.targets:
            result.local_path = str(run_dir / "model")
        if "s3" in settings.targets:
            result.s3_uri, result.s3_new_upload = publish_to_s3(
                run_dir, run_id, model_name, test_f1, settings, client, backoff_base_s
            )
        if "hub" not in settings.targets:
            return result
        try:
            result.hub_commit_url, result.hub_new_commit = publish_to_hub(
                run_dir / "model", run_id, test_f1, settings, token, backoff_base_s, parent_commit=read_at
            )
            return result
        except HubMovedOn as moved:
            if attempt == GATE_ATTEMPTS:
                raise PublishError(
                    f"{settings.hub_repo_id} kept changing while publishing ({moved}); publish again"
                ) from None
            log.warning("%s; deciding the quality gate again (attempt %d of %d)", moved, attempt + 1, GATE_ATTEMPTS)
    raise AssertionError("unreachable")


def gate_markdown(result: PublishResult) -> str:
    g = result.gate
    verdict = "published" if result.published else "**not published**"
    lines = [f"# Quality gate: {verdict}", "", g.reason, "", f"- new test F1: {g.new_f1:.4f}"]
    if g.min_f1 is not None:
        lines.append(f"- floor (publish.min_f1): {g.min_f1:.4f}")
    if g.published_f1 is not None:
        lines.append(f"- published model: {g.published_f1:.4f} ({g.published_at})")
    return "\n".join(lines)


@task(
    name="publish",
    cache_policy=NO_CACHE,  # every Hub and S3 call inside retries itself (runtime.retry.call_with_backoff)
    timeout_seconds=NETWORK_STEP_TIMEOUT_S,
)
def publish_task(run_dir: str, settings: PublishSettings, model_name: str) -> PublishResult:
    logger = get_run_logger()
    try:
        result = publish_run(Path(run_dir), settings, model_name)
    except PublishError as e:
        logger.error("publish failed: %s", e)
        raise
    except Exception as e:
        logger.warning("publish attempt failed with %s", describe_error(e))
        raise
    create_markdown_artifact(key="quality-gate", markdown=gate_markdown(result), description="Publish decision")
    if not result.published:
        logger.warning("not publishing: %s", result.gate.reason)
        return result
    if result.hub_commit_url:
        create_link_artifact(key="hub-commit", link=result.hub_commit_url, link_text=settings.hub_repo_id)
    logger.info("published to %s", ", ".join(x for x in (result.hub_commit_url, result.s3_uri, result.local_path) if x))
    return result
