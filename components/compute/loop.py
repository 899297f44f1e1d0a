"""The training loop SFT, the reward model and DPO share: sharded micro batches, DeepSpeed steps, periodic
logging, evaluation and checkpoints through the stage's `Hooks` (so the loop never imports a tracker)."""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from components.compute import engine as ds
from components.compute.config import TrainingConfig
from components.compute.engine import is_rank0, world
from components.stage import Hooks, LogFn

log = logging.getLogger(__name__)


@dataclass
class LoopPlan:
    """How many examples, passes and optimizer steps a stage runs."""

    name: str
    n_examples: int
    micro_batch_size: int
    grad_accum: int
    epochs: int
    max_steps: int | None
    log_every: int
    eval_every: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * world()[1]

    @property
    def total_steps(self) -> int:
        per_epoch = max(self.n_examples // self.global_batch, 1)
        return min(self.max_steps, per_epoch * self.epochs) if self.max_steps else per_epoch * self.epochs


def reproducible(metrics: dict[str, float]) -> dict[str, float]:
    """Every metric except wall-clock rates and timings: what the same training always reproduces."""
    return {k: v for k, v in metrics.items() if not (k.startswith(("time/", "perf/")) or k.endswith("_per_s"))}


def metrics_file(metrics: dict[str, float]) -> str:
    """metrics.json for a saved model, reproducible, so the output's content fingerprint is too."""
    return json.dumps(reproducible(metrics), indent=1, sort_keys=True)


def start(name: str, model: torch.nn.Module, n_examples: int, config: TrainingConfig):
    """The loop plan and DeepSpeed engine of a training stage: (plan, engine)."""
    c = config.compute
    plan = LoopPlan(name, n_examples, c.micro_batch_size, c.gradient_accumulation_steps, config.epochs,
                    config.max_steps, config.log_every, config.eval_every, config.seed)
    ds_config = ds.ds_config(c, config.lr, config.weight_decay, config.warmup_steps, plan.total_steps)
    return plan, ds.initialize(model, ds_config)


def micro_batches(plan: LoopPlan) -> Iterator[list[int]]:
    """Index lists of this rank's micro batches. Every rank shuffles with the same seed and cuts each global batch
    into world x grad_accum strided micro batches, so 1 rank x 2 accumulated micro batches computes exactly the
    micro batches that 2 ranks x 1 micro batch compute."""
    rank, world_size = world()
    rng, step = random.Random(plan.seed), 0
    while True:
        order = list(range(plan.n_examples))
        rng.shuffle(order)
        order += order[: (-len(order)) % plan.global_batch]  # wrap around so a step is never short
        for start in range(0, len(order) - plan.global_batch + 1, plan.global_batch):
            batch = order[start:start + plan.global_batch]
            n_micro = world_size * plan.grad_accum  # micro batch j is batch[j::n_micro]; rank r takes j = r + k*world
            for k in range(plan.grad_accum):
                yield batch[rank + k * world_size::n_micro]
            step += 1
            if step >= plan.total_steps:
                return


def train(engine, plan: LoopPlan, step_fn: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]],
          evaluate: Callable[[], dict[str, float]], hooks: Hooks, checkpoint_every: int = 0) -> dict[str, float]:
    """Run `plan.total_steps` optimizer steps. `step_fn(indices)` returns (loss, metrics) for one micro batch;
    `evaluate()` returns held-out metrics (called on every rank, as ZeRO-3 forwards need them all).
    Returns the last training and evaluation metrics, named `<plan.name>/train/<k>` and `<plan.name>/eval/<k>`:
    SFT's and the reward model's losses are different quantities, so they never share a name (nor an MLflow column).
    Metrics go to `hooks.log` (rank 0). With `hooks.checkpoint_dir`, a checkpoint goes there every
    `checkpoint_every` steps, and a checkpoint already there is resumed: the engine, RNG and loop state are restored
    and the batches already trained on are skipped, so the run ends as an uninterrupted one would.
    `hooks.checkpointed()` is called (rank 0) after each one is complete."""
    checkpoint_dir, on_log = hooks.checkpoint_dir, hooks.log
    sums: dict[str, float] = {}
    count, micro, t0, last, reported = 0, 0, time.perf_counter(), {}, 0
    if checkpoint_dir and Path(checkpoint_dir, "latest").exists():
        state = ds.load_checkpoint(engine, checkpoint_dir)["loop"]
        sums, count, last, reported, micro = state["sums"], state["count"], state["last"], state["step"], \
            state["step"] * plan.grad_accum
        log.info("%s resumed at step %d/%d from %s", plan.name, state["step"], plan.total_steps, checkpoint_dir)
    done = micro
    engine.train()
    for indices in micro_batches(plan):
        if done:  # the resumed run's micro batches were trained on before the checkpoint
            done -= 1
            continue
        loss, metrics = step_fn(indices)
        engine.backward(loss)
        engine.step()
        for k, v in {"loss": loss.item(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v
        count, micro = count + 1, micro + 1
        if micro % plan.grad_accum:
            continue
        step = micro // plan.grad_accum
        if step % plan.log_every == 0 or step == plan.total_steps:
            last = {f"{plan.name}/train/{k}": v / count for k, v in sums.items()}
            last[f"{plan.name}/train/lr"] = engine.get_lr()[0]
            last[f"{plan.name}/train/steps_per_s"] = (step - reported) / max(time.perf_counter() - t0, 1e-9)
            _report(plan, step, last, on_log)
            sums, count, t0, reported = {}, 0, time.perf_counter(), step
        if step % plan.eval_every == 0 or step == plan.total_steps:
            last.update(_evaluate(engine, plan, step, evaluate, on_log))
        if checkpoint_dir and checkpoint_every and step % checkpoint_every == 0 and step < plan.total_steps:
            ds.save_checkpoint(engine, checkpoint_dir, f"step{step:06d}",
                               {"loop": {"sums": sums, "count": count, "last": last, "step": step}})
            if is_rank0():
                hooks.checkpointed()
    return last


def _evaluate(engine, plan: LoopPlan, step: int, evaluate, on_log) -> dict[str, float]:
    engine.eval()
    with torch.no_grad():
        metrics = {f"{plan.name}/eval/{k}": v for k, v in evaluate().items()}
    engine.train()
    _report(plan, step, metrics, on_log)
    return metrics


def _report(plan: LoopPlan, step: int, metrics: dict[str, float], on_log: LogFn) -> None:
    if not is_rank0():
        return
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if math.isfinite(v))
    log.info("%s step %d/%d %s", plan.name, step, plan.total_steps, shown)
    on_log(step, metrics)
