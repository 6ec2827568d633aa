"""Publishing to the Hugging Face Hub, keyed on the model's content.

A commit carries the digest of the model folder in its message: publishing the same content again adds
nothing, new weights make one new commit. The commit names the parent the quality gate read, so a
publisher that lost a race decides the gate again (HubMovedOn).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from nerflow.tasks.runtime.errors import PublishError
from nerflow.tasks.runtime.files import SEAL, sha256_file
from nerflow.tasks.runtime.retry import call_with_backoff, http_status
from nerflow.tasks.settings import PublishSettings


def explain_hub_error(exc: Exception, repo_id: str, token_block: str) -> PublishError | None:
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
            return PublishError(
                f"{repo_id} was not found (HTTP 404): check publish.hub_repo_id and the token's namespace"
            )
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
                lambda: api.hf_hub_download(repo_id, "README.md", revision=sha, local_dir=tmp),
                what=f"download {repo_id} card",
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


def _commit_run(
    api, repo_id: str, model_dir: Path, run_id: str, test_f1: float, settings: PublishSettings, parent: str | None
):
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
            ignore_patterns=[SEAL, f"*/{SEAL}"],  # nerflow's completeness records, in model/ and onnx/
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
            f"no Hub token: create the Prefect Secret block {settings.hf_token_block!r} or set HF_TOKEN to "
            f"publish to {repo_id}"
        )
    api = hub_api(token)
    try:
        call_with_backoff(
            lambda: api.create_repo(repo_id, private=settings.hub_private, exist_ok=True),
            what=f"create {repo_id}",
            base_s=backoff_base_s,
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
        explained = explain_hub_error(exc, repo_id, settings.hf_token_block)
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
    call_with_backoff(
        lambda: api.create_tag(repo_id, tag=tag, revision=oid, exist_ok=True),
        what=f"tag {repo_id}",
        base_s=backoff_base_s,
    )
