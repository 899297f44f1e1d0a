"""Entry point for launched training: `torchrun --nproc_per_node N -m components.launch sft ...`.

Every rank runs the same stage; only rank 0 logs, writes metrics and saves the model.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from components.config.loading import load_config

log = logging.getLogger(__name__)


def jsonl_logger(path: str | Path):
    """An `on_log(step, metrics)` callback appending one JSON line per call."""
    def on_log(step: int, metrics: dict[str, float]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    return on_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.launch", description=__doc__)
    parser.add_argument("stage", choices=["sft", "reward", "ppo", "dpo", "es"])
    parser.add_argument("--config", help="pipeline YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--data", required=True, help="data prep output directory")
    parser.add_argument("--out", required=True, help="where the trained model directory goes")
    parser.add_argument("--base", help="reward: backbone directory when reward.model is unset; "
                                       "ppo, dpo, es: initial policy directory when its `model` is unset")
    parser.add_argument("--reward-model", help="ppo, es: reward model directory when its `reward_model` is unset")
    parser.add_argument("--metrics", help="JSONL file for per-step metrics (rank 0 only)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s")
    config = load_config(args.config, args.set)
    on_log = jsonl_logger(args.metrics) if args.metrics else None
    if args.stage == "sft":
        from components.sft.train import run
        metrics = run(config.sft, args.data, args.out, config.data.max_length, on_log=on_log)
    elif args.stage == "reward":
        from components.reward.train import run
        metrics = run(config.reward, args.data, args.out, config.data.max_length, base_model=args.base, on_log=on_log)
    elif args.stage == "dpo":
        from components.dpo.train import run
        metrics = run(config.dpo, args.data, args.out, config.data.max_length, base_model=args.base, on_log=on_log)
    elif args.stage == "es":
        from components.es import run
        from components.evaluation.gold import load_gold
        metrics = run(config.es, Path(args.data), args.out, args.base, args.reward_model,
                      gold_fn=load_gold(config.gold_fn), on_log=on_log).metrics
    else:
        from components.evaluation.gold import load_gold
        from components.ppo import run
        metrics = run(config.ppo, Path(args.data), args.out, args.base, args.reward_model, config.data.max_length,
                      gold_fn=load_gold(config.gold_fn), on_log=on_log).metrics
    log.info("done: %s", json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
