"""The data contract between stages: `manifest.json` lists source, seed, counts and file hashes; its
sha256 is the dataset fingerprint that downstream cache keys use."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from components.errors import DataError

MANIFEST = "manifest.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(root: str | Path) -> str:
    """Hash of every file under `root` (relative names and contents), order-independent of the walk."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(out_dir: str | Path, info: dict[str, Any]) -> str:
    """Hash every file in `out_dir`, write the manifest (last), and return the fingerprint."""
    out_dir = Path(out_dir)
    files = {p.relative_to(out_dir).as_posix(): file_sha256(p)
             for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {**info, "files": files}
    blob = canonical_json(manifest)
    (out_dir / MANIFEST).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def read_manifest(out_dir: str | Path, verify: bool = True) -> tuple[dict[str, Any], str]:
    """Return (manifest, fingerprint). With `verify`, every listed file must exist with its hash."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(str(path), "no manifest: the directory is not a finished data prep output")
    blob = path.read_bytes()
    manifest = json.loads(blob)
    if verify:
        for name, digest in manifest["files"].items():
            f = Path(out_dir) / name
            if not f.is_file() or file_sha256(f) != digest:
                raise DataError(str(f), "missing or changed since the manifest was written")
    return manifest, hashlib.sha256(blob).hexdigest()
