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
