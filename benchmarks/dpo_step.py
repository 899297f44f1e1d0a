"""Seconds per DPO optimizer step and peak RSS of the DPO stage; print one JSON object as the last line.

    python benchmarks/dpo_step.py [--config configs/demo.yaml] [--model DIR] [--steps 20] [--set k=v ...]

The initial policy is the config's SFT model spec (the toy's random init, or `--model DIR`, e.g. the SmolLM2
fixture with configs/smollm2.yaml): a DPO step costs the same whatever the weights. `setup_s` is loading the model
and the one pass that computes the reference log-probs of every pair, before the first step.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from components.compute.memory import PeakRSS
from components.config.loading import load_config, with_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--model", help="initial policy directory (default: the config's sft.model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, [f"dpo.max_steps={args.steps}", "dpo.log_every=1", "dpo.eval_every=100000",
                                       *args.set])
    model = {"name_or_path": args.model} if args.model else config.sft.model.model_dump(mode="json")
    config = with_overrides(config, [f"dpo.model={json.dumps(model)}"])
    from components.data.prepare import prepare
    from components.dpo.train import run
    from components.stage import Hooks, inputs_for

    out = tempfile.mkdtemp(prefix="rlhf-bench-dpo-")
    data = prepare(config.data, f"{out}/data").path
    stamps: list[float] = []
    with PeakRSS() as memory:
        start = time.perf_counter()
        metrics = run(config.dpo, inputs_for("dpo", config, {"data": data}), Path(out, "dpo"), Hooks(
            on_log=lambda step, m: stamps.append(time.perf_counter()) if "dpo/train/loss" in m else None))
        total = time.perf_counter() - start
    c, per_step = config.dpo.compute, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    print(json.dumps({
        "config": args.config, "model": args.model or "sft.model", "threads": torch.get_num_threads(),
        "pairs_per_step": c.micro_batch_size * c.gradient_accumulation_steps, "lora": config.dpo.lora is not None,
        "precision": c.precision, "zero_stage": c.zero_stage, "steps": args.steps,
        "s_per_step": round(per_step, 4), "setup_s": round(stamps[0] - start - per_step, 2),
        "total_s": round(total, 2), "peak_rss_mb": round(memory.peak_mb),
        "train_loss_last": round(metrics["dpo/train/loss"], 4),
    }))


if __name__ == "__main__":
    main()
