"""Download s3:// objects and prefixes with boto3 into a local cache.

Endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL for MinIO-style servers,
AWS_ACCESS_KEY_ID, ...); boto3 reads them itself.
"""
from __future__ import annotations

from pathlib import Path

from components.errors import RLHFError


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def _client():
    import boto3  # deferred: boto3 is slow to import and most runs never touch S3

    return boto3.client("s3")


def download_file(uri: str, cache_dir: str | Path) -> Path:
    """Fetch one object to `<cache_dir>/s3/<bucket>/<key>` and return the local path."""
    bucket, key = split_uri(uri)
    local = Path(cache_dir) / "s3" / bucket / key
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        _client().download_file(bucket, key, str(local))
    except Exception as exc:  # botocore raises many types; all mean the same thing to the user
        raise RLHFError(f"{uri}: download failed: {exc}") from exc
    return local


def download_dir(uri: str, cache_dir: str | Path) -> Path:
    """Fetch every object under the prefix `uri` and return the local directory."""
    bucket, prefix = split_uri(uri)
    local = Path(cache_dir) / "s3" / bucket / prefix
    client = _client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not keys:
            raise RLHFError(f"{uri}: no objects under this prefix")
        for key in keys:
            target = local / key[len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except RLHFError:
        raise
    except Exception as exc:
        raise RLHFError(f"{uri}: download failed: {exc}") from exc
    return local
