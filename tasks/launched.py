"""What torchrun runs for a multi-process stage: `python -m tasks.launched <stage> ...` on every rank.

Every rank trains; rank 0 alone logs into the stage's MLflow run (its id comes down on the command line, the
tracking URI in MLFLOW_TRACKING_URI) and
writes the stage's returned metrics to `--result`, which the launching task reads back.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.launched")
    parser.add_argument("stage", choices=["sft", "reward", "ppo", "dpo", "es"])
    parser.add_argument("--stage-config", required=True, help="JSON of the stage's config")
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sft", help="SFT model dir (reward backbone, PPO, DPO and ES initial policy)")
    parser.add_argument("--reward", help="reward model dir (PPO, ES)")
    parser.add_argument("--feedback", action="append", default=[], help="feedback dataset dir (reward, DPO; repeatable)")
    parser.add_argument("--checkpoints", help="checkpoint dir to save into and resume from")
    parser.add_argument("--checkpoint-store", help="artifact store root that rank 0 copies each checkpoint to")
    parser.add_argument("--cache-key", help="the stage output's cache key (where in --checkpoint-store)")
    parser.add_argument("--gold", help="gold scorer (module:function) of held-out samples")
    parser.add_argument("--result", required=True, help="JSON file for the returned metrics (rank 0)")
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    on_log = None
    if rank == 0:
        from mlflow.tracking import MlflowClient

        from tasks.tracking import run_logger
        on_log = run_logger(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), args.run_id)
    text = Path(args.stage_config).read_text()
    saved = None  # rank 0 copies each completed checkpoint to the artifact store
    if rank == 0 and args.checkpoint_store:
        from components.io.partial import PartialCheckpoints
        from components.io.store import ArtifactStore
        saved = PartialCheckpoints(ArtifactStore(args.checkpoint_store), args.stage, args.cache_key,
                                   args.checkpoints).save
    ckpt = {"checkpoint_dir": args.checkpoints, "on_checkpoint": saved}
    if args.stage == "sft":
        from components.sft.config import SFTConfig
        from components.sft.train import run
        metrics = run(SFTConfig.model_validate_json(text), args.data, args.out, args.max_length, on_log=on_log, **ckpt)
    elif args.stage == "reward":
        from components.reward.config import RewardConfig
        from components.reward.train import run
        metrics = run(RewardConfig.model_validate_json(text), args.data, args.out, args.max_length,
                      base_model=args.sft, on_log=on_log, feedback_dirs=args.feedback, **ckpt)
    elif args.stage == "dpo":
        from components.dpo.config import DPOConfig
        from components.dpo.train import run
        metrics = run(DPOConfig.model_validate_json(text), args.data, args.out, args.max_length, base_model=args.sft,
                      on_log=on_log, feedback_dirs=args.feedback, **ckpt)
    elif args.stage == "es":
        from components.es import ESConfig, run
        from components.evaluation.gold import load_gold
        metrics = run(ESConfig.model_validate_json(text), Path(args.data), args.out, args.sft, args.reward,
                      gold_fn=load_gold(args.gold), on_log=on_log, **ckpt).metrics
    else:
        from components.evaluation.gold import load_gold
        from components.ppo import PPOConfig, run
        metrics = run(PPOConfig.model_validate_json(text), Path(args.data), args.out, args.sft, args.reward,
                      args.max_length, gold_fn=load_gold(args.gold), resume=True, on_log=on_log, **ckpt).metrics
    if rank == 0:
        Path(args.result).write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
