"""publish: a quality gate, then the Hugging Face Hub, S3 and/or the local run folder.

Publishing is keyed on what is published, the model's content (a digest of its files), not on the
run folder's name: a Hub commit carries the digest in its message, and publishing the same content
again adds nothing while new weights (a re-trained run) make one new commit; an S3 upload writes
`manifest.json` (files, sizes, sha256) last, so a reader never mistakes a half-finished upload for a
model, a retry completes it, and other files go to a new revision prefix.
Transient errors (connection, timeout, 429, 5xx) are retried with exponential backoff and jitter;
401/403/404 fail at once with what to fix. Tokens and keys are never logged or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.settings import PublishSettings
from tasks import s3
from tasks.retry import NETWORK_STEP_TIMEOUT_S, call_with_backoff, describe_error, http_status
from tasks.secrets import resolve_secret
from tasks.storage import SEAL, sha256_file

log = logging.getLogger(__name__)

RUN_FILES = ("metrics.json", "settings.json", "train_log.json")
MANIFEST = "manifest.json"


class PublishError(RuntimeError):
    """Publishing cannot succeed without a change by the user (credentials, permissions, names)."""


class GateDecision(BaseModel):
    passed: bool
    reason: str
    new_f1: float
    min_f1: float | None
    published_f1: float | None
    published_at: str | None


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


# ------------------------------------------------------------------------------------------------ gate


def quality_gate(
    new_f1: float,
    min_f1: float | None,
    published_f1: float | None,
    require_improvement: bool,
    published_at: str | None = None,
) -> GateDecision:
    def decide(passed: bool, reason: str) -> GateDecision:
        return GateDecision(
            passed=passed, reason=reason, new_f1=new_f1, min_f1=min_f1, published_f1=published_f1, published_at=published_at
        )

    if min_f1 is not None and new_f1 < min_f1:
        return decide(False, f"test F1 {new_f1:.4f} is below the floor publish.min_f1={min_f1:.4f}")
    if require_improvement and published_f1 is not None and new_f1 <= published_f1:
        return decide(False, f"test F1 {new_f1:.4f} does not beat the published model's {published_f1:.4f} ({published_at})")
    if require_improvement and published_f1 is not None:
        return decide(True, f"test F1 {new_f1:.4f} beats the published model's {published_f1:.4f} ({published_at})")
    return decide(True, f"test F1 {new_f1:.4f} passes" + (f" the floor {min_f1:.4f}" if min_f1 is not None else " (no floor set)"))


# ------------------------------------------------------------------------------------------------- hub


def _explain_hub_error(exc: Exception, repo_id: str, token_block: str) -> PublishError | None:
    status = http_status(exc)
    if status == 401:
        return PublishError(
            f"the Hub rejected the token (HTTP 401) for {repo_id}: put a valid write token in the Prefect "
            f"Secret block {token_block!r} (publish.hf_token_block) or in HF_TOKEN"
        )
    if status == 403:
        return PublishError(
            f"the token may not write to {repo_id} (HTTP 403): use a token with write access to that "
            "namespace, or change publish.hub_repo_id"
        )
    if status == 404:
        from huggingface_hub.errors import RepositoryNotFoundError

        if isinstance(exc, RepositoryNotFoundError):
            return PublishError(f"{repo_id} was not found (HTTP 404): check publish.hub_repo_id and the token's namespace")
        url = getattr(getattr(exc, "response", None), "url", None) or "an endpoint"
        return PublishError(
            f"{url} answered HTTP 404 while publishing to {repo_id}: the Hub at HF_ENDPOINT "
            f"({os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}) lacks this endpoint or file"
        )
    return None


def hub_api(token: str | None):
    from huggingface_hub import HfApi

    # Read at call time, as the huggingface_hub client itself does at import time.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def model_digest(model_dir: Path) -> str:
    """What is published, as a hash: every file of the model folder (card included) and its bytes."""
    h = hashlib.sha256(b"nerflow-model-v1")
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.name != SEAL):
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()[:16]


def content_marker(digest: str) -> str:
    return f"model {digest}"


def run_marker(run_id: str, digest: str) -> str:
    return f"[nerflow run {run_id} {content_marker(digest)}]"


class HubMovedOn(RuntimeError):
    """The Hub branch got a commit after the quality gate read it: the gate must be decided again."""


def hub_published_f1(api, repo_id: str) -> tuple[float | None, str | None, str | None]:
    """(test F1 of the model on the Hub's main branch, where it was read, the commit it was read at).

    The commit is passed to the publishing commit as its parent: if another publisher commits in
    between, the Hub refuses ours and the gate is decided again against the new model."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        sha = call_with_backoff(lambda: api.model_info(repo_id).sha, what=f"read {repo_id}")
        with tempfile.TemporaryDirectory() as tmp:
            path = call_with_backoff(
                lambda: api.hf_hub_download(repo_id, "README.md", revision=sha, local_dir=tmp), what=f"download {repo_id} card"
            )
            card = ModelCard.load(path)
    except RepositoryNotFoundError:
        return None, None, None
    except EntryNotFoundError:
        return None, None, sha
    for result in card.data.eval_results or []:
        if result.metric_type == "f1":
            return float(result.metric_value), f"hub:{repo_id}@{sha[:12]}", sha
    return None, None, sha


def find_model_commit(api, repo_id: str, digest: str) -> str | None:
    """The commit that made main hold this content, if main still holds it: the newest commit nerflow
    made, if it carries this digest. An older one does not count, as newer content replaced it."""
    commits = call_with_backoff(lambda: api.list_repo_commits(repo_id), what=f"list {repo_id} commits")
    for commit in commits:
        text = f"{commit.title}\n{commit.message or ''}"
        if "[nerflow run " in text:
            return commit.commit_id if content_marker(digest) in text else None
    return None


def find_model_pull_request(api, repo_id: str, digest: str) -> int | None:
    """The pull request (open, merged or closed) that proposed this content, if any."""
    marker = content_marker(digest)
    found = call_with_backoff(
        lambda: [d for d in api.get_repo_discussions(repo_id, discussion_type="pull_request") if marker in d.title],
        what=f"list {repo_id} pull requests",
    )
    return found[0].num if found else None


def _commit_run(api, repo_id: str, model_dir: Path, run_id: str, test_f1: float, settings: PublishSettings, parent: str | None):
    """One attempt: (URL, new?) of the commit or pull request holding this content, made only if none
    exists yet. Checked before every attempt: a commit or PR whose response was lost is not made twice."""
    from huggingface_hub.errors import HfHubHTTPError

    digest = model_digest(model_dir)
    if settings.hub_create_pr:
        number = find_model_pull_request(api, repo_id, digest)
        if number is not None:
            return f"{api.endpoint}/{repo_id}/discussions/{number}", False
    elif existing := find_model_commit(api, repo_id, digest):
        return f"{api.endpoint}/{repo_id}/commit/{existing}", False
    try:
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            commit_message=f"nerflow: test F1 {test_f1:.4f} {run_marker(run_id, digest)}",
            commit_description=f"Trained by nerflow run {run_id}; word-level test F1 {test_f1:.4f}.",
            create_pr=settings.hub_create_pr,
            parent_commit=None if settings.hub_create_pr else parent,
            ignore_patterns=[SEAL],
        )
    except HfHubHTTPError as exc:
        if http_status(exc) == 412:
            raise HubMovedOn(f"{repo_id} has a commit newer than {parent}") from exc
        raise
    return info.pr_url or f"{api.endpoint}/{repo_id}/commit/{info.oid}", True


def publish_to_hub(
    model_dir: Path,
    run_id: str,
    test_f1: float,
    settings: PublishSettings,
    token: str | None,
    backoff_base_s: float = 1.0,
    parent_commit: str | None = None,
) -> tuple[str, bool]:
    """Create the repo if needed and commit the model folder (or open a pull request) once per run;
    returns (commit or pull-request URL, new?). parent_commit: the commit the quality gate read."""
    repo_id = settings.hub_repo_id
    assert repo_id
    if not token:
        raise PublishError(
            f"no Hub token: create the Prefect Secret block {settings.hf_token_block!r} or set HF_TOKEN to publish to {repo_id}"
        )
    api = hub_api(token)
    try:
        call_with_backoff(
            lambda: api.create_repo(repo_id, private=settings.hub_private, exist_ok=True), what=f"create {repo_id}", base_s=backoff_base_s
        )
        url, new = call_with_backoff(
            lambda: _commit_run(api, repo_id, model_dir, run_id, test_f1, settings, parent_commit),
            what=f"commit to {repo_id}",
            base_s=backoff_base_s,
        )
        if settings.hub_tag_runs and not settings.hub_create_pr:
            tag_run(api, repo_id, f"run-{run_id}", url.rsplit("/", 1)[-1], backoff_base_s)
    except HubMovedOn:
        raise
    except Exception as exc:
        explained = _explain_hub_error(exc, repo_id, settings.hf_token_block)
        if explained is not None:
            raise explained from None
        raise
    return url, new


def tag_run(api, repo_id: str, tag: str, oid: str, backoff_base_s: float) -> None:
    """Tag the commit; a run published again with new content moves its tag to the new commit."""
    refs = call_with_backoff(lambda: api.list_repo_refs(repo_id), what=f"list {repo_id} tags", base_s=backoff_base_s)
    current = next((t.target_commit for t in refs.tags if t.name == tag), None)
    if current == oid:
        return
    if current is not None:
        call_with_backoff(lambda: api.delete_tag(repo_id, tag=tag), what=f"move tag {tag}", base_s=backoff_base_s)
    call_with_backoff(lambda: api.create_tag(repo_id, tag=tag, revision=oid, exist_ok=True), what=f"tag {repo_id}", base_s=backoff_base_s)


# -------------------------------------------------------------------------------------------------- s3


def s3_client(settings: PublishSettings):
    """boto3 S3 client: an AwsCredentials block if named, else the standard AWS chain (AWS_ENDPOINT_URL too)."""
    try:
        return s3.client(settings.aws_credentials_block)
    except ImportError as e:
        raise PublishError("publish.aws_credentials_block needs prefect-aws: pip install 'nerflow[aws]'") from e


def run_files(run_dir: Path) -> dict[str, Path]:
    """What a published run consists of: the model folder plus the run's metrics and settings."""
    files = {
        f"model/{p.relative_to(run_dir / 'model').as_posix()}": p
        for p in sorted((run_dir / "model").rglob("*"))
        if p.is_file() and p.name != SEAL  # nerflow's own completeness record, not part of the model
    }
    files.update({name: run_dir / name for name in RUN_FILES if (run_dir / name).is_file()})
    return files


def _read_json_object(client, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def s3_published_f1(client, s3_uri: str, model_name: str) -> tuple[float | None, str | None]:
    """Test F1 of the newest complete (manifested) run of this model under the S3 prefix."""
    bucket, prefix = s3.parse_s3_uri(s3_uri)
    base = f"{prefix}/{model_name}/" if prefix else f"{model_name}/"
    manifests = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        for obj in page.get("Contents", [])
        if obj["Key"].endswith(f"/{MANIFEST}")
    ]
    # S3's LastModified has one-second resolution; the manifest's own timestamp orders runs exactly.
    newest = max(
        ((_read_json_object(client, bucket, key) or {}, key) for key in manifests),
        key=lambda item: item[0].get("created_at", ""),
        default=None,
    )
    if newest is None or newest[0].get("test_f1") is None:
        return None, None
    return float(newest[0]["test_f1"]), f"s3://{bucket}/{newest[1]}"


@contextlib.contextmanager
def _explained_s3_errors(bucket: str, base: str) -> Iterator[None]:
    """401/403/404 from S3 become a PublishError that says what to fix; anything else passes through."""
    try:
        yield
    except Exception as exc:
        status = http_status(exc)
        if status in (401, 403):
            raise PublishError(
                f"S3 refused access to s3://{bucket}/{base}/ (HTTP {status}): check the AWS credentials "
                "(publish.aws_credentials_block or the AWS environment) and the bucket policy"
            ) from None
        if status == 404:
            raise PublishError(f"S3 bucket {bucket!r} not found (HTTP 404): check publish.s3_uri") from None
        raise


def _s3_prefix(client, bucket: str, base: str, entries: list[dict], backoff_base_s: float) -> tuple[str, dict | None]:
    """Where the run goes (its own prefix, or a revision prefix when that one holds other files) and
    the manifest already there, if any."""
    read = lambda key: call_with_backoff(lambda: _read_json_object(client, bucket, key), what="read manifest", base_s=backoff_base_s)  # noqa: E731
    existing = read(f"{base}/{MANIFEST}")
    if existing and existing.get("files") != entries:
        base = f"{base}/rev-{hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]}"
        existing = read(f"{base}/{MANIFEST}")
    return base, existing


def publish_to_s3(
    run_dir: Path,
    run_id: str,
    model_name: str,
    test_f1: float,
    settings: PublishSettings,
    client=None,
    backoff_base_s: float = 1.0,
) -> tuple[str, bool]:
    """Upload the run under s3://BUCKET/PREFIX/<model>/<run>/, manifest last; returns (URI, new upload?).

    A run published again with other files (retrained in the same folder) goes to a new prefix,
    <run>/rev-<content hash>/, with its own manifest: objects under a manifest never change, so a
    reader that trusts a manifest's sha256s is never served other bytes."""
    assert settings.s3_uri
    client = client or s3_client(settings)
    bucket, prefix = s3.parse_s3_uri(settings.s3_uri)
    base = "/".join(p for p in (prefix, model_name, run_id) if p)
    files = run_files(run_dir)
    entries = [{"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)} for rel, path in files.items()]
    with _explained_s3_errors(bucket, base):
        base, existing = _s3_prefix(client, bucket, base, entries, backoff_base_s)
        if existing and existing.get("files") == entries:
            return f"s3://{bucket}/{base}/", False
        for entry in entries:
            call_with_backoff(
                lambda entry=entry: client.upload_file(str(files[entry["path"]]), bucket, f"{base}/{entry['path']}"),
                what=f"upload {entry['path']}",
                base_s=backoff_base_s,
            )
        created = datetime.now(timezone.utc).isoformat()
        manifest = {"model_name": model_name, "run_id": run_id, "test_f1": test_f1, "created_at": created, "files": entries}
        call_with_backoff(
            lambda: client.put_object(
                Bucket=bucket, Key=f"{base}/{MANIFEST}", Body=json.dumps(manifest, indent=2).encode(), ContentType="application/json"
            ),
            what="write manifest",
            base_s=backoff_base_s,
        )
    return f"s3://{bucket}/{base}/", True


# ----------------------------------------------------------------------------------------------- step


def read_run(run_dir: Path) -> tuple[str, float]:
    """A finished run's id (its folder name) and word-level test F1, from its metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if not (run_dir / "model" / "config.json").is_file() or not metrics_path.is_file():
        raise PublishError(f"{run_dir}: not a finished nerflow run (needs model/ and metrics.json)")
    try:
        return run_dir.name, float(json.loads(metrics_path.read_text())["word_level"]["test"]["f1"])
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(f"{metrics_path}: not the metrics.json of a nerflow run ({type(e).__name__}: {str(e)[:120]})") from None


GATE_ATTEMPTS = 3  # how often the gate is decided again when another publisher got to the Hub first


def decide_gate(settings: PublishSettings, model_name: str, test_f1: float, token: str | None, client) -> tuple[GateDecision, str | None]:
    """The quality gate's decision and the Hub commit it compared against (None: no Hub comparison)."""
    published_f1, published_at, read_at = None, None, None
    if settings.require_improvement:
        # The Hub card is the public face of the model; S3 manifests speak for S3-only setups.
        if "hub" in settings.targets:
            try:
                published_f1, published_at, read_at = hub_published_f1(hub_api(token), settings.hub_repo_id)
            except Exception as exc:
                raise _explain_hub_error(exc, settings.hub_repo_id or "", settings.hf_token_block) or exc from None
        if published_f1 is None and client is not None:
            published_f1, published_at = s3_published_f1(client, settings.s3_uri, model_name)
    return quality_gate(test_f1, settings.min_f1, published_f1, settings.require_improvement, published_at), read_at


def publish_run(run_dir: Path, settings: PublishSettings, model_name: str, backoff_base_s: float = 1.0) -> PublishResult:
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
            result.s3_uri, result.s3_new_upload = publish_to_s3(run_dir, run_id, model_name, test_f1, settings, client, backoff_base_s)
        if "hub" not in settings.targets:
            return result
        try:
            result.hub_commit_url, result.hub_new_commit = publish_to_hub(
                run_dir / "model", run_id, test_f1, settings, token, backoff_base_s, parent_commit=read_at
            )
            return result
        except HubMovedOn as moved:
            if attempt == GATE_ATTEMPTS:
                raise PublishError(f"{settings.hub_repo_id} kept changing while publishing ({moved}); publish again") from None
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
    cache_policy=NO_CACHE,  # every Hub and S3 call inside retries itself (tasks.retry.call_with_backoff)
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
