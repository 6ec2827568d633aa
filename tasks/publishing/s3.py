"""Publishing a run to S3: its files, then `manifest.json` (files, sizes, sha256) last.

A reader never mistakes a half-finished upload for a model, a retry completes it, and other files go to
a new revision prefix: objects under a manifest never change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nerflow.tasks.runtime import s3
from nerflow.tasks.runtime.errors import PublishError
from nerflow.tasks.runtime.files import SEAL, sha256_file
from nerflow.tasks.runtime.retry import call_with_backoff, http_status
from nerflow.tasks.settings import PublishSettings

RUN_FILES = ("metrics.json", "settings.json", "train_log.json")
MANIFEST = "manifest.json"


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

    def read(key: str) -> dict | None:
        return call_with_backoff(
            lambda: _read_json_object(client, bucket, key), what="read manifest", base_s=backoff_base_s
        )

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
        manifest = {
            "model_name": model_name,
            "run_id": run_id,
            "test_f1": test_f1,
            "created_at": created,
            "files": entries,
        }
        call_with_backoff(
            lambda: client.put_object(
                Bucket=bucket,
                Key=f"{base}/{MANIFEST}",
                Body=json.dumps(manifest, indent=2).encode(),
                ContentType="application/json",
            ),
            what="write manifest",
            base_s=backoff_base_s,
        )
    return f"s3://{bucket}/{base}/", True
