"""Human preference labels: validated, turned into TRL preference records, stored as a versioned dataset.

Accepted label files (JSONL or CSV, one pair per row):
    prompt, chosen, rejected                       an explicit preference
    prompt, response_a, response_b, choice [, score]   choice A / B / tie (any case); score 1-5 optional
Ties carry no preference and are dropped (counted), as are pairs nobody answered.
"""
from __future__ import annotations

import json
from pathlib import Path

from components.data.config import DatasetSource
from components.data.formats import check_pair
from components.data.manifest import write_manifest
from components.data.sources import read_rows
from components.errors import DataError
from components.io.atomic import atomic_dir

CHOICES = {"a": "A", "b": "B", "tie": "tie"}
FILE = "preferences.jsonl"


def _text(row: dict, key: str, source: str, line: int) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(source, f"'{key}' is missing or empty", line=line)
    return value


def add_choice(records: list[dict], counts: dict[str, int], prompt: str, a: str, b: str, choice: str,
               score=None) -> None:
    """Append {"prompt", "chosen", "rejected"[, "score"]} for choice A or B; count a tie instead."""
    choice = CHOICES[choice.strip().lower()]
    if choice == "tie":
        counts["ties"] += 1
        return
    if a.strip() == b.strip():  # two samples that came out the same: no preference to learn, dropped and counted
        counts["identical"] = counts.get("identical", 0) + 1
        return
    chosen, rejected = (a, b) if choice == "A" else (b, a)
    records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    **({"score": int(score)} if score else {})})


def labels_from_answers(pairs: list[dict], answers: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Preference records from a form's answers ({"pair", "choice", "score"}); unanswered ("skip") pairs and
    ties are dropped and counted."""
    by_pair = {a["pair"]: a for a in answers}
    records, counts = [], {"pairs": len(pairs), "answered": 0, "ties": 0, "unanswered": 0}
    for pair in pairs:
        answer = by_pair.get(pair["pair"])
        if answer is None or answer["choice"] == "skip":
            counts["unanswered"] += 1
            continue
        counts["answered"] += 1
        add_choice(records, counts, pair["prompt"], pair["response_a"], pair["response_b"], answer["choice"],
                   answer.get("score"))
    counts["preferences"] = len(records)
    return records, counts


def read_label_file(path: str | Path, cache_dir: str | Path = ".rlhf/cache") -> tuple[list[dict], dict[str, int]]:
    """Validate a label file; return (preference records, counts). Errors name the file and line."""
    rows = read_rows(DatasetSource(path=str(path)), cache_dir)
    if not rows.rows:
        raise DataError(rows.name, "no labels in the file")
    records, counts = [], {"rows": len(rows.rows), "ties": 0}
    for row, line in zip(rows.rows, rows.lines):
        prompt = _text(row, "prompt", rows.name, line)
        if "chosen" in row or "rejected" in row:
            records.append(check_pair({"prompt": prompt, "chosen": _text(row, "chosen", rows.name, line),
                                       "rejected": _text(row, "rejected", rows.name, line)}, rows.name, line))
            continue
        a, b = _text(row, "response_a", rows.name, line), _text(row, "response_b", rows.name, line)
        choice = str(row.get("choice") or "").strip()
        if choice.lower() not in CHOICES:
            raise DataError(rows.name, f"choice {choice!r} is not one of A, B, tie", line=line)
        score = row.get("score")
        if score not in (None, "") and str(score).strip() not in {"1", "2", "3", "4", "5"}:
            raise DataError(rows.name, f"score {score!r} is not an integer from 1 to 5", line=line)
        add_choice(records, counts, prompt, a, b, choice, score or None)
    counts["preferences"] = len(records)
    return records, counts


def write_dataset(records: list[dict], counts: dict[str, int], origin: str, out_dir: str | Path) -> str:
    """Write preferences.jsonl and manifest.json (last) atomically; return the dataset fingerprint."""
    if not records:
        raise DataError(origin, "no usable preference labels (every pair was a tie or unanswered)")
    with atomic_dir(out_dir) as tmp:
        (tmp / FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        fingerprint = write_manifest(tmp, {"origin": origin, "counts": counts})
    return fingerprint


def read_dataset(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(path) / FILE).read_text().splitlines()]
