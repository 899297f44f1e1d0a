"""The data prep stage's entry point: `prepare` into the stage's output, its manifest kept with the stage's run."""
from __future__ import annotations

import json
from pathlib import Path

from components.data.config import DataConfig
from components.data.prepare import prepare
from components.stage import Hooks, Inputs


def run(config: DataConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """Prepare the splits into `out`; the row count of each split as metrics."""
    prepared = prepare(config, out)
    hooks.log_text("data_manifest.json", json.dumps(prepared.manifest, indent=1))
    return {f"data/rows/{k}": float(v) for k, v in prepared.manifest["counts"].items()}
