"""Time each stage of the demo config end to end; print one JSON object as the last line.

    python benchmarks/stages.py [--config configs/demo.yaml] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from components.config.loading import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, args.set)
    from components.data.prepare import prepare
    from components.reward.train import run as reward
    from components.sft.train import run as sft
    from components.stage import Hooks, inputs_for

    out, seconds = tempfile.mkdtemp(prefix="rlhf-bench-"), {}
    start = time.perf_counter()
    data = prepare(config.data, f"{out}/data").path
    seconds["data"] = time.perf_counter() - start
    start = time.perf_counter()
    sft_metrics = sft(config.sft, inputs_for("sft", config, {"data": data}), Path(out, "sft"), Hooks())
    seconds["sft"] = time.perf_counter() - start
    start = time.perf_counter()
    rm_metrics = reward(config.reward, inputs_for("reward", config, {"data": data, "sft": Path(out, "sft")}),
                        Path(out, "reward"), Hooks())
    seconds["reward"] = time.perf_counter() - start
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "sft_eval_loss": [round(sft_metrics["sft/eval/loss_before"], 4), round(sft_metrics["sft/eval/loss"], 4)],
        "reward_eval_accuracy": round(rm_metrics["reward/eval/accuracy"], 4),
    }))


if __name__ == "__main__":
    main()
