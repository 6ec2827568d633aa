"""s3://bucket/prefix URIs, shared by dataset sources, the dataset watcher and publishing."""

from __future__ import annotations

import re

_S3_URI = re.compile(r"s3://([^/]+)/?(.*)")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end); ValueError for anything else."""
    match = _S3_URI.fullmatch(uri)
    if not match:
        raise ValueError(f"{uri}: not an s3://bucket/prefix URI")
    return match.group(1), match.group(2).strip("/")


def client(credentials_block: str | None = None):
    """A boto3 S3 client without botocore's own retries (nerflow.tasks.runtime.retry decides): credentials from the
    named prefect-aws AwsCredentials block, else the standard AWS chain; endpoint from AWS_ENDPOINT_URL."""
    from botocore.config import Config

    from nerflow.tasks.runtime.retry import NO_CLIENT_RETRIES

    config = Config(**NO_CLIENT_RETRIES)
    if credentials_block:
        from prefect_aws import AwsCredentials  # ImportError without the aws extra

        return AwsCredentials.load(credentials_block, _sync=True).get_boto3_session().client("s3", config=config)
    import boto3

    return boto3.client("s3", config=config)
