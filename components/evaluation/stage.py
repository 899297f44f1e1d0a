"""The evaluation stage's entry point: every policy `policies` names against SFT (and the champion), then the
candidate, the reward-hacking flag, the samples and the report published through the stage's hooks."""
from __future__ import annotations

import json
from pathlib import Path

from components.evaluation.config import EvaluationConfig
from components.evaluation.evaluate import run as evaluate
from components.evaluation.gate import best_candidate
from components.evaluation.gold import load_gold
from components.evaluation.metrics import held_out
from components.evaluation.report import self_contained
from components.models.config import ScorerSpec
from components.stage import Hooks, Inputs

REPORT_FILES = ("report.html", "report.md", "curves.png", "frontier.png", "scores.png")


def run(config: EvaluationConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """Evaluate the policies in `inputs` (`inputs.policies` name them) against the SFT model and, when given, the
    champion, scored by the reward model PPO used (the `scorer` setting, else the reward stage's output); the best
    by the `select_by` setting is the candidate (the `rlhf.candidate` tag)."""
    scorer, select_by = inputs.settings.get("scorer"), inputs.settings["select_by"]
    baselines = {name: inputs.dirs[name] for name in ("sft", "champion") if name in inputs.dirs}
    metrics = evaluate(config, inputs.dirs["data"], {name: inputs.dirs[name] for name in inputs.policies}, baselines,
                       ScorerSpec.model_validate(scorer) if scorer else ScorerSpec(name_or_path=str(inputs.dirs["reward"])),
                       out, inputs.max_length, gold_fn=load_gold(inputs.gold), select_by=select_by)
    hooks.tag({"rlhf.candidate": best_candidate(metrics, list(inputs.policies), select_by)})
    if metrics.get(held_out("reward_hacking")):
        hooks.tag({"rlhf.reward_hacking": "flagged"})
    hooks.log(0, metrics)
    hooks.log_table([json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()], "samples.json")
    for name in REPORT_FILES:
        hooks.log_artifact(out / name, "report")
    hooks.report("evaluation", self_contained(out / "report.md"), metrics)
    return metrics
