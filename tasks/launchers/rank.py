"""The per-rank entry point: every rank of a launched stage runs this module; rank 0 alone logs, writes metrics and
(through the stage) saves the output. By hand, on a pipeline YAML and stored input directories:

    torchrun --nproc_per_node 2 -m tasks.launchers.rank sft --config configs/demo.yaml --input data=DIR --out DIR
    torchrun --nproc_per_node 2 -m tasks.launchers.rank ppo --config configs/demo.yaml --input data=DIR \\
        --input sft=DIR --input reward=DIR --out DIR --metrics ppo.jsonl
    torchrun --nproc_per_node 2 -m tasks.launchers.rank dpo --config configs/demo.yaml --set dpo.beta=0.2 \\
        --input data=DIR --input sft=DIR [--feedback DIR] --out DIR

Without an MLflow run id, rank 0 appends its metrics to `--metrics` as JSON lines. The torchrun launcher runs it
with `--request` (a StageRequest file), the stage run's `--run-id` (MLflow's URI comes in MLFLOW_TRACKING_URI),
the checkpoint directory and store, and `--result`, where rank 0 writes the stage's metrics.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from components.stage import Hooks, inputs_for, jsonl_logger
from tasks.launchers.request import StageRequest


def rank_hooks(args: argparse.Namespace, stage: str) -> Hooks:
    """Every rank saves into and resumes from the checkpoint directory; rank 0 also logs (into the MLflow run, else
    to the metrics file) and copies each completed checkpoint to the artifact store."""
    hooks = Hooks(checkpoint_dir=Path(args.checkpoints) if args.checkpoints else None)
    if int(os.environ.get("RANK", 0)) != 0:
        return hooks
    if args.run_id:
        from mlflow.tracking import MlflowClient

        from tasks.tracking import run_logger
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        hooks.on_log = run_logger(client, args.run_id)
        hooks.on_samples = lambda it, rows: client.log_table(
            args.run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
            artifact_file=f"samples/iteration_{it:05d}.json") if rows else None
    elif args.metrics:
        hooks.on_log = jsonl_logger(args.metrics)
    if args.checkpoint_store:
        from components.io.partial import PartialCheckpoints
        from components.io.store import ArtifactStore
        hooks.on_checkpoint = PartialCheckpoints(ArtifactStore(args.checkpoint_store), stage, args.cache_key,
                                                 args.checkpoints).save
    return hooks


def request_from_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> StageRequest:
    """A StageRequest from a pipeline YAML, a stage name and input directories (the by-hand use)."""
    from components.config.loading import load_config

    if not (args.stage and args.out):
        parser.error("give a stage and --out (or --request)")
    config = load_config(args.config, args.set)
    dirs = dict(item.split("=", 1) for item in args.input)
    if args.stage not in config.stages:  # a policy stage the config's `policies` does not name
        config = config.model_copy(update={"policies": [*config.policies, args.stage]})
    return StageRequest.of(args.stage, config, inputs_for(args.stage, config, dirs, args.feedback), Path(args.out))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.launchers.rank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", help="the stage to run (by hand)")
    p.add_argument("--config", help="pipeline YAML (by hand)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--input", action="append", default=[], metavar="STAGE=DIR",
                   help="an upstream stage's output directory, e.g. data=DIR sft=DIR (repeatable)")
    p.add_argument("--feedback", action="append", default=[], metavar="DIR", help="a stored feedback dataset")
    p.add_argument("--out", help="where the stage's output directory goes")
    p.add_argument("--metrics", help="JSONL file for rank 0's metrics when there is no --run-id")
    p.add_argument("--request", help="a StageRequest file (what the torchrun launcher writes)")
    p.add_argument("--result", help="JSON file for the stage's returned metrics (rank 0)")
    p.add_argument("--run-id", help="the MLflow run rank 0 logs into")
    p.add_argument("--checkpoints", help="checkpoint directory to save into and resume from")
    p.add_argument("--checkpoint-store", help="artifact store root that rank 0 copies each checkpoint to")
    p.add_argument("--cache-key", help="the stage output's cache key (where in --checkpoint-store)")
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    request = (StageRequest.from_json(Path(args.request).read_text()) if args.request
               else request_from_flags(args, cli))
    metrics = request.run(rank_hooks(args, request.stage))
    if rank == 0:
        logging.getLogger(__name__).info("done: %s", json.dumps(metrics))
        if args.result:
            Path(args.result).write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
