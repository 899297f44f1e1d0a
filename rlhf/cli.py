"""`rlhf`: validate a config, run the stages, or run one stage.

Until the pipeline flow lands, `rlhf run` runs data prep -> SFT -> reward model -> PPO in sequence in this process,
writing each stage to `<output_dir>/<stage>/`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from components.config.loading import load_config
from components.config.pipeline import PipelineConfig
from components.errors import RLHFError

STAGES = ("data", "sft", "reward", "ppo")
log = logging.getLogger("rlhf")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml", help="pipeline YAML (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set sft.lr=2e-5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF pipeline: data prep, SFT, reward model, PPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_args(sub.add_parser("validate", help="validate a config and print it resolved"))
    _config_args(sub.add_parser("run", help="run every stage in order"))
    stage = sub.add_parser("stage", help="run one stage from the stored outputs of its upstream stages")
    stage.add_argument("name", choices=STAGES)
    _config_args(stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_logging()
    try:
        config = load_config(args.config, args.set)
        if args.command == "validate":
            print(json.dumps(config.model_dump(mode="json"), indent=2))
            return 0
        names = STAGES if args.command == "run" else (args.name,)
        results = {name: run_stage(name, config) for name in names}
    except RLHFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _summary(config, results)
    return 0


def stage_dir(config: PipelineConfig, name: str) -> Path:
    return Path(config.output_dir) / name


def run_stage(name: str, config: PipelineConfig) -> dict:
    """Run one stage into `<output_dir>/<name>` and return its headline metrics."""
    start = time.perf_counter()
    log.info("== %s", name)
    data = stage_dir(config, "data")
    if name == "data":
        from components.data.prepare import prepare
        prepared = prepare(config.data, data)
        result = {"fingerprint": prepared.fingerprint, **{f"rows/{k}": v for k, v in prepared.manifest["counts"].items()}}
    elif name == "sft":
        from components.sft.train import run
        result = run(config.sft, data, stage_dir(config, "sft"), config.data.max_length)
    elif name == "reward":
        from components.reward.train import run
        result = run(config.reward, data, stage_dir(config, "reward"), config.data.max_length,
                     base_model=stage_dir(config, "sft"))
    else:
        from components.data.gold import gold_scores
        from components.ppo import run
        gold = gold_scores if config.data.source == "demo" else None
        result = run(config.ppo, data, stage_dir(config, "ppo"), stage_dir(config, "sft"), stage_dir(config, "reward"),
                     config.data.max_length, gold_fn=gold).metrics
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _summary(config: PipelineConfig, results: dict[str, dict]) -> None:
    print("\nsummary")
    for name, metrics in results.items():
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                 if k.startswith(("eval/", "rows/")) or k in ("fingerprint", "seconds")}
        print(f"  {name:7s} {stage_dir(config, name)}  {shown}")
        if name == "ppo" and "eval/gold_mean" in metrics:
            print(f"          gold score on held-out prompts: SFT {metrics['eval_before/gold_mean']:.3f} -> PPO "
                  f"{metrics['eval/gold_mean']:.3f}; PPO wins {metrics['eval/gold_win_rate_vs_initial']:.0%} of "
                  f"prompts; KL to SFT {metrics['eval/kl_mean']:.2f} nats")


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
