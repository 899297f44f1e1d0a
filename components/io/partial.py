"""A running stage's checkpoints in the artifact store, so a rerun on any machine resumes where the last one stopped.

On a local store root the checkpoint directory *is* `{root}/{stage}/{key}/_partial/`. On S3 the stage writes its
checkpoints to a local directory and `save()` copies each completed one to `{root}/{stage}/{key}/_partial/`:
files as content-addressed objects (`blobs/<sha256>`, each uploaded once) and then `checkpoint.json` (name ->
sha256), written last in one PUT, so the stored checkpoint is always a complete one, whatever moment a worker
dies at. `restore()` brings the stored checkpoint back to the local directory of a fresh worker.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from components.data.manifest import canonical_json, file_sha256
from components.io.s3 import split_uri
from components.io.store import PARTIAL, ArtifactStore, StoreError, retry

log = logging.getLogger(__name__)
INDEX = "checkpoint.json"


class PartialCheckpoints:
    """The checkpoints of the output (stage, key) of `store`. `local` is where the stage reads and writes them:
    `local_dir` on S3, the store's own `_partial/` directory on a local root."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, local_dir: str | Path):
        self.store, self.stage, self.key, self.uri = store, stage, key, f"{store.uri(stage, key)}/{PARTIAL}"
        self.local = Path(local_dir) if store.is_s3 else Path(self.uri)
        self._hashes: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha256): hash each file once
        self._stored = False  # is (or may) a checkpoint (be) in the store: what drop() must remove

    def restore(self) -> bool:
        """Make `local` hold the stored checkpoint (downloading what differs); True when there is one."""
        if not self.store.is_s3:
            return self.local.is_dir() and any(self.local.iterdir())
        index = self.store._read_json(f"{self.uri}/{INDEX}")
        if index is None:
            return False
        self._stored = True
        if self._describe() == index:
            return True
        bucket, prefix = split_uri(self.uri)
        tmp = self.local.with_name(self.local.name + ".restoring")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, sha in index.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            retry(f"download {self.uri}/{name}", lambda n=name, h=sha: self.store._s3().download_file(
                bucket, f"{prefix}/blobs/{h}", str(tmp / n)), self.store.attempts)
            if file_sha256(tmp / name) != sha:
                raise StoreError(f"{self.uri}/{name}: downloaded checkpoint file does not match its sha256")
        shutil.rmtree(self.local, ignore_errors=True)
        tmp.rename(self.local)
        log.info("restored the checkpoint %s (%d files)", self.uri, len(index))
        return True

    def save(self) -> None:
        """Copy the local checkpoint (complete: called after a save returned) to the store."""
        if not self.store.is_s3:
            return
        bucket, prefix = split_uri(self.uri)
        s3 = self.store._s3()
        files = self._describe()
        self._stored = True
        stored = set(self.store._listing(bucket, f"{prefix}/blobs"))
        for name, sha in files.items():
            if sha not in stored:
                retry(f"upload {self.uri}/{name}", lambda n=name, h=sha: s3.upload_file(
                    str(self.local / n), bucket, f"{prefix}/blobs/{h}"), self.store.attempts)
                stored.add(sha)
        retry(f"upload {self.uri}/{INDEX}", lambda: s3.put_object(Bucket=bucket, Key=f"{prefix}/{INDEX}",
                                                                   Body=canonical_json(files)), self.store.attempts)
        for sha in stored - set(files.values()):  # blobs of older checkpoints
            s3.delete_object(Bucket=bucket, Key=f"{prefix}/blobs/{sha}")

    def drop(self) -> None:
        """Remove the checkpoints, stored and local (the stage's output is stored)."""
        if self.store.is_s3 and self._stored:
            self.store._delete_prefix(self.uri, first=INDEX)
        shutil.rmtree(self.local, ignore_errors=True)

    def _describe(self) -> dict[str, str]:
        """{relative name: sha256} of the local checkpoint, rehashing only files whose size or mtime changed."""
        out = {}
        for path in sorted(self.local.rglob("*")) if self.local.is_dir() else []:
            if not path.is_file():
                continue
            name, st = path.relative_to(self.local).as_posix(), os.stat(path)
            cached = self._hashes.get(name)
            if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
                cached = self._hashes[name] = (st.st_size, st.st_mtime_ns, file_sha256(path))
            out[name] = cached[2]
        return out
