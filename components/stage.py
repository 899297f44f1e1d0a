"""The one signature every stage's entry point has: `run(config, inputs, out, hooks) -> metrics`.

`config` is the stage's own section of the PipelineConfig, `inputs` what it reads (upstream outputs as local
directories, stored feedback datasets, the pipeline-level settings its registry entry declares), `out` the
directory its output goes to, and `hooks` what it reports through (logging, samples, checkpoints, a stop check,
tables, artifacts and tags), so no stage imports a tracker or an orchestrator. Whoever runs a stage (a Prefect
task in this process, every rank of a torchrun launch, a test) builds these two objects and calls `run_entry`.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class Inputs:
    """What a stage reads besides its config: plain data, so it crosses process boundaries as JSON."""

    dirs: dict[str, Path] = field(default_factory=dict)  # upstream stage (or "champion") -> its output, local dir
    feedback: list[Path] = field(default_factory=list)  # stored human-feedback datasets (stages reading feedback)
    settings: dict[str, Any] = field(default_factory=dict)  # the pipeline-level settings the stage declares
    policies: list[str] = field(default_factory=list)  # which of `dirs` are policies (for the evaluation)

    @property
    def max_length(self) -> int:
        """data.max_length: sequences are cut to it."""
        return self.settings["data.max_length"]

    @property
    def gold(self) -> str | None:
        """The gold scorer of held-out samples as module:function, or None."""
        return self.settings.get("gold")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dirs": {k: str(v) for k, v in self.dirs.items()},
                "feedback": [str(d) for d in self.feedback]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Inputs":
        return cls(dirs={k: Path(v) for k, v in data["dirs"].items()}, feedback=[Path(d) for d in data["feedback"]],
                   settings=data["settings"], policies=data["policies"])


def _nothing(*args, **kwargs) -> None:
    return None


@dataclass
class Hooks:
    """What a stage reports through. Every hook does nothing unless set. Training loops call `on_log` and
    `on_checkpoint` on rank 0 only; every rank saves into and resumes from `checkpoint_dir`.

    Every training stage resumes the same way: when `checkpoint_dir` holds a checkpoint of the stage, the run
    continues from it and ends as an uninterrupted run would."""

    on_log: LogFn = _nothing  # (step, metrics): a training step's or an evaluation's metrics
    on_samples: Callable[[int, list[dict]], None] = _nothing  # (iteration, rows): a held-out evaluation's samples
    on_checkpoint: Callable[[], None] = _nothing  # a checkpoint in checkpoint_dir is complete
    checkpoint_dir: Path | None = None  # where checkpoints go and are resumed from (None: no checkpoints)
    stop: Callable[[], None] = _nothing  # raises when the stage must stop now (a SIGTERM was received)
    tag: Callable[[dict[str, str]], None] = _nothing  # tags of the stage's run
    log_table: Callable[[list[dict], str], None] = _nothing  # (rows, artifact file): a table of the stage's run
    log_artifact: Callable[[Path, str | None], None] = _nothing  # (local file, artifact dir) of the stage's run
    log_text: Callable[[str, str], None] = _nothing  # (file name, text): a small file of the stage's run
    report: Callable[[str, str, dict[str, float]], None] = _nothing  # (key, markdown, metrics): for the UI

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Report one step's metrics (after the stop check: a logged step is a safe place to stop)."""
        self.stop()
        self.on_log(step, metrics)

    def checkpointed(self) -> None:
        """A checkpoint is complete: hand it on, then stop here if asked to."""
        self.on_checkpoint()
        self.stop()


def run_entry(entry: str, config: Any, inputs: Inputs, out: str | Path, hooks: Hooks) -> dict[str, float]:
    """Import the entry point `module:function` and run it; its metrics, as plain floats."""
    module, _, name = entry.partition(":")
    run = getattr(importlib.import_module(module), name)
    metrics = run(config, inputs, Path(out), hooks)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def inputs_for(stage: str, config, dirs: dict[str, Path], feedback: list[Path] | None = None) -> Inputs:
    """The inputs of stage `stage` of `config` (a PipelineConfig): `dirs` and `feedback` as given, the settings its
    registry entry declares read from `config`, and the policies when it reads them."""
    from components.config.stages import stage as spec_of

    spec = spec_of(stage)
    return Inputs(dirs={k: Path(v) for k, v in dirs.items()}, feedback=[Path(d) for d in feedback or []],
                  settings=spec.settings_of(config), policies=list(config.policies) if spec.reads_policies else [])


def jsonl_logger(path: str | Path) -> LogFn:
    """An `on_log(step, metrics)` appending one JSON line per call (a run without a tracker)."""
    def on_log(step: int, metrics: dict[str, float]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    return on_log
