"""The artifact store: stage outputs under `{root}/{stage}/{cache_key}/`, on local disk or S3.

A stage output is complete only when its `_stage.json` (file names, sizes and sha256s, plus metadata) exists,
and that file is written last: a crash or a lost connection mid-upload leaves files without it, which the
store treats as absent. The fingerprint of an output is the sha256 of its file list, i.e. of its content.
On S3 the marker also holds each object's ETag as stored, so an object replaced since (even by one of the same
size) makes the output "not stored" and it is recomputed. A running stage's checkpoints live under
`{root}/{stage}/{cache_key}/_partial/` (see `components.io.partial`).
S3 endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL for MinIO-style servers).
Transient S3 errors (connection lost, 5xx, throttling) are retried with backoff for about half a minute; errors
that no retry can fix (no such bucket, bad credentials, access denied) fail at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from components.data.manifest import canonical_json, file_sha256
from components.errors import RLHFError
from components.io.s3 import split_uri

log = logging.getLogger(__name__)
MARKER = "_stage.json"
PARTIAL = "_partial"  # a running stage's checkpoints, beside (never inside) its output's files
T = TypeVar("T")
# S3 error codes that mean the request can never succeed as it is: retrying only delays the error
PERMANENT = ("NoSuchBucket", "InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch", "InvalidBucketName",
             "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken")


class StoreError(RLHFError):
    """The artifact store could not be read or written; `permanent` when no retry can fix it."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def describe(local_dir: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `local_dir` (the marker excluded)."""
    root = Path(local_dir)
    return {p.relative_to(root).as_posix(): file_sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER and PARTIAL not in p.parts}


def fingerprint(files: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json(files)).hexdigest()


def permanent(exc: BaseException) -> str | None:
    """The S3 error code of `exc` when no retry can fix it, else None. boto3's transfer manager wraps a ClientError
    in S3UploadFailedError's message, so the code is also looked for there."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code in PERMANENT:
        return code
    return next((c for c in PERMANENT if f"({c})" in str(exc)), None)


def retry(what: str, fn: Callable[[], T], attempts: int = 7, base_delay: float = 0.5, max_delay: float = 8.0) -> T:
    """Call `fn`, retrying with exponential backoff (0.5, 1, 2, 4, 8, 8 s: a ~25 s outage is ridden out); the
    final failure, or a permanent S3 error at once, becomes a StoreError naming `what`."""
    for attempt in range(attempts):
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:  # botocore and OSError raise many types; all are retried the same way
            if code := permanent(exc):
                raise StoreError(f"{what}: {code} (not retried): {exc}", permanent=True) from exc
            if attempt == attempts - 1:
                raise StoreError(f"{what}: failed after {attempts} attempts: {exc}") from exc
            delay = min(base_delay * 2 ** attempt, max_delay)
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class ArtifactStore:
    """`root` is a local directory or `s3://bucket/prefix`. `cache_dir` holds local copies of S3 outputs."""

    def __init__(self, root: str, cache_dir: str | Path = ".rlhf/cache", attempts: int = 7):
        self.root, self.cache_dir, self.attempts = root.rstrip("/"), Path(cache_dir), attempts
        self.is_s3 = root.startswith("s3://")

    def uri(self, stage: str, key: str) -> str:
        return f"{self.root}/{stage}/{key}"

    # -- reading -----------------------------------------------------------------------------------------------
    def marker(self, stage: str, key: str) -> dict[str, Any] | None:
        """The completion marker of an output, or None when the output is absent or incomplete."""
        if not self.is_s3:
            path = Path(self.uri(stage, key)) / MARKER
            return json.loads(path.read_text()) if path.is_file() else None
        return self._read_json(f"{self.uri(stage, key)}/{MARKER}")

    def verified(self, stage: str, key: str) -> dict[str, Any] | None:
        """The marker if the output is complete and every file it lists is present as stored: on S3 with the size
        and ETag it had when uploaded (markers written before ETags were recorded: the size), on local disk with its
        sha256; otherwise None (the stage is recomputed)."""
        marker = self.marker(stage, key)
        if marker is None:
            return None
        if self.is_s3:
            bucket, prefix = split_uri(self.uri(stage, key))
            listed = retry(f"list {self.uri(stage, key)}", lambda: self._listing(bucket, prefix), self.attempts)
            etags = marker.get("etags", {})
            ok = all(name in listed and listed[name]["Size"] == marker["sizes"][name]
                     and listed[name]["ETag"] == etags.get(name, listed[name]["ETag"]) for name in marker["files"])
            if not ok:
                log.warning("%s: stored files differ from the stage marker; recomputing", self.uri(stage, key))
        else:
            root = Path(self.uri(stage, key))
            ok = all((root / n).is_file() and file_sha256(root / n) == h for n, h in marker["files"].items())
        return marker if ok else None

    def fetch(self, stage: str, key: str) -> Path:
        """A local directory holding the output (S3 outputs are downloaded to the cache once and verified)."""
        if not self.is_s3:
            return Path(self.uri(stage, key))
        marker = self.marker(stage, key)
        if marker is None:
            raise StoreError(f"{self.uri(stage, key)}: no complete stage output there")
        local = self.cache_dir / "store" / stage / key
        if local.is_dir() and describe(local) == marker["files"]:
            return local
        bucket, prefix = split_uri(self.uri(stage, key))
        tmp = local.with_name(local.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in marker["files"]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            retry(f"download {self.uri(stage, key)}/{name}",
                  lambda n=name: self._s3().download_file(bucket, f"{prefix}/{n}", str(tmp / n)), self.attempts)
        if describe(tmp) != marker["files"]:
            raise StoreError(f"{self.uri(stage, key)}: downloaded files do not match the stage marker")
        shutil.rmtree(local, ignore_errors=True)
        tmp.rename(local)
        return local

    # -- writing -----------------------------------------------------------------------------------------------
    def put(self, local_dir: str | Path, stage: str, key: str, meta: dict[str, Any],
            files: dict[str, str] | None = None) -> dict[str, Any]:
        """Store `local_dir` as the output (stage, key): files first, then the marker with `meta` and the file
        list (`files`, `describe(local_dir)` when the caller has not hashed them already). Returns the marker (its
        `fingerprint` is the content hash). On local disk `local_dir` is moved into the store; on S3 it is
        uploaded and left in place."""
        local_dir = Path(local_dir)
        files = files if files is not None else describe(local_dir)
        sizes = {n: (local_dir / n).stat().st_size for n in files}
        marker = {**meta, "stage": stage, "cache_key": key, "files": files, "sizes": sizes,
                  "fingerprint": fingerprint(files)}
        if self.is_s3:
            bucket, prefix = split_uri(self.uri(stage, key))
            for name in files:
                retry(f"upload {self.uri(stage, key)}/{name}",
                      lambda n=name: self._s3().upload_file(str(local_dir / n), bucket, f"{prefix}/{n}"), self.attempts)
            listed = retry(f"list {self.uri(stage, key)}", lambda: self._listing(bucket, prefix), self.attempts)
            marker["etags"] = {n: listed[n]["ETag"] for n in files}
            retry(f"upload {self.uri(stage, key)}/{MARKER}",
                  lambda: self._s3().put_object(Bucket=bucket, Key=f"{prefix}/{MARKER}", Body=canonical_json(marker)),
                  self.attempts)
            return marker
        target = Path(self.uri(stage, key))
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local_dir, target)  # a rename on one filesystem; the stage's work dir is consumed
        (target / MARKER).write_bytes(canonical_json(marker))
        return marker

    def delete(self, stage: str, key: str) -> None:
        """Remove an output (its marker first, so a half-deleted output is never complete)."""
        if not self.is_s3:
            shutil.rmtree(self.uri(stage, key), ignore_errors=True)
            return
        self._delete_prefix(self.uri(stage, key), first=MARKER)

    # -- S3 plumbing -------------------------------------------------------------------------------------------
    def _read_json(self, uri: str) -> Any:
        """The JSON object at an s3:// `uri`, or None when there is none."""
        bucket, key = split_uri(uri)
        s3 = self._s3()

        def get():
            try:
                return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except s3.exceptions.NoSuchKey:
                return None
        return retry(f"read {uri}", get, self.attempts)

    def _delete_prefix(self, uri: str, first: str) -> None:
        """Delete every object under the s3:// prefix `uri`, `first` (its completion record) before the others, so
        what is half-deleted never reads as complete."""
        bucket, prefix = split_uri(uri)
        s3 = self._s3()
        s3.delete_object(Bucket=bucket, Key=f"{prefix}/{first}")
        for name in self._listing(bucket, prefix):
            s3.delete_object(Bucket=bucket, Key=f"{prefix}/{name}")

    def _listing(self, bucket: str, prefix: str) -> dict[str, dict]:
        """{name under prefix: its list_objects_v2 entry (Size, ETag, ...)}."""
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        return {o["Key"][len(prefix) + 1:]: o for page in pages for o in page.get("Contents", [])}

    def _s3(self):
        if not hasattr(self, "_client"):
            import boto3
            from botocore.config import Config

            # Short timeouts and few botocore retries: our own retry() adds backoff and the clear error.
            self._client = boto3.client("s3", config=Config(connect_timeout=3, read_timeout=30,
                                                            retries={"max_attempts": 2, "mode": "standard"}))
        return self._client
