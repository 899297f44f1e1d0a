"""Read dataset rows, keeping where each came from (file and line) for error messages.

JSONL and CSV are read line by line with the standard library because error messages must name the line;
Parquet is read with pyarrow; a hub id goes through `datasets.load_dataset`.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.config import DatasetSource
from components.errors import DataError, bad_utf8_line
from components.io.s3 import download_file

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Rows:
    """Rows of one source. `lines[i]` is the 1-based line (JSONL, CSV) or row number (Parquet, hub) of `rows[i]`."""

    name: str
    rows: list[dict[str, Any]]
    lines: list[int]


def read_rows(source: DatasetSource, cache_dir: str | Path) -> Rows:
    """Read every row of `source`. Raises DataError naming the file and line for malformed input."""
    path = source.path
    if path.startswith("s3://"):
        rows = _read_file(download_file(path, cache_dir), path)
    elif Path(path).suffix in _SUFFIXES or Path(path).exists() or path.startswith((".", "/")):
        if not Path(path).is_file():
            raise DataError(path, "file not found")
        rows = _read_file(Path(path), path)
    else:
        rows = _read_hub(path, source.split, cache_dir)
    if not rows.rows:
        raise DataError(path, f"no rows: the split '{source.split}' is empty")
    return rows


def _read_file(local: Path, name: str) -> Rows:
    kind = _SUFFIXES.get(local.suffix)
    if kind is None:
        raise DataError(name, f"unknown file type '{local.suffix}'; use .jsonl, .json, .parquet or .csv")
    try:
        return {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[kind](local, name)
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        raise DataError(name, f"not UTF-8 text ({exc.reason}); save the file as UTF-8",
                        bad_utf8_line(local.read_bytes())) from None


def _read_jsonl(local: Path, name: str) -> Rows:
    rows, lines = [], []
    with open(local, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(name, f"malformed JSON: {exc.msg} at character {exc.pos}", number) from None
            if not isinstance(row, dict):
                raise DataError(name, f"expected a JSON object, got {type(row).__name__}", number)
            rows.append(row)
            lines.append(number)
    return Rows(name, rows, lines)


def _read_csv(local: Path, name: str) -> Rows:
    rows, lines = [], []
    with open(local, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row:
                raise DataError(name, "more fields than the header has", reader.line_num)
            rows.append(dict(row))
            lines.append(reader.line_num)
    return Rows(name, rows, lines)


def _read_parquet(local: Path, name: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(local).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(name, f"not a readable parquet file: {exc}") from None
    return Rows(name, rows, list(range(1, len(rows) + 1)))


def _read_hub(dataset_id: str, split: str, cache_dir: str | Path) -> Rows:
    """Load a Hugging Face hub dataset (needs network; not exercised on machines without a hub)."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, cache_dir=str(Path(cache_dir) / "hub"))
    except Exception as exc:
        raise DataError(dataset_id, f"could not load hub dataset (split '{split}'): {exc}") from exc
    rows = ds.to_list()
    return Rows(f"{dataset_id}[{split}]", rows, list(range(1, len(rows) + 1)))
