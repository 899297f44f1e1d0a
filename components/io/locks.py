"""Advisory file locks between processes on one machine (fcntl.flock): released by the kernel when the holder dies,
so a kill -9 never leaves a stale lock behind."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created) for the block; waits, saying so, while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that holds %s", what or path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_dir(root: str) -> Path:
    """Where the locks of an artifact store live: inside a local root (every process using it sees them), and for
    an s3:// root in this machine's temp dir, keyed by the root (processes on other machines are not locked out:
    there the store's ETag check makes an output one of them overwrote "not stored", so it is recomputed)."""
    if not root.startswith("s3://"):
        return Path(root) / ".locks"
    return Path(tempfile.gettempdir()) / "rlhf-locks" / hashlib.sha256(root.encode()).hexdigest()[:16]
