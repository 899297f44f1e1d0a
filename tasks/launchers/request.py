"""One stage to run, as plain data: what a launcher hands every rank it starts (a torchrun command line, and next a
Ray worker's arguments), and the per-rank function that runs it."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from components.config.base import StrictModel
from components.config.stages import stage as spec_of
from components.stage import Hooks, Inputs, run_entry


@dataclass
class StageRequest:
    """Stage `stage`'s entry point, its own config section, its inputs and where its output goes. The entry point
    comes from the launching process's registry, so a stage registered there runs on every rank too."""

    stage: str
    entry: str  # module:function
    config: StrictModel  # the stage's section of the PipelineConfig
    inputs: Inputs
    out: Path

    @classmethod
    def of(cls, stage: str, config, inputs: Inputs, out: Path) -> "StageRequest":
        """The request to run stage `stage` of `config` (a PipelineConfig)."""
        return cls(stage, spec_of(stage).entry, config.section(stage), inputs, Path(out))

    def run(self, hooks: Hooks) -> dict[str, float]:
        """What every rank does: the stage's entry point on this request, reporting through `hooks`."""
        return run_entry(self.entry, self.config, self.inputs, self.out, hooks)

    def to_json(self) -> str:
        kind = type(self.config)
        return json.dumps({"stage": self.stage, "entry": self.entry, "config_class": f"{kind.__module__}:{kind.__name__}",
                           "config": self.config.model_dump(mode="json"), "inputs": self.inputs.to_json(),
                           "out": str(self.out)})

    @classmethod
    def from_json(cls, text: str) -> "StageRequest":
        data = json.loads(text)
        module, _, name = data["config_class"].partition(":")
        config = getattr(importlib.import_module(module), name).model_validate(data["config"])
        return cls(data["stage"], data["entry"], config, Inputs.from_json(data["inputs"]), Path(data["out"]))
