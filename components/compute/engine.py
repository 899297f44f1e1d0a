"""DeepSpeed in one place: our ComputeConfig -> a DeepSpeed config; process-group start-up with or without a
launcher; engine creation; checkpoints; gathering ZeRO-3 weights to save a HF directory.

Without a launcher (torchrun / deepspeed), a single process starts a 1-process group itself. The backend is
nccl on CUDA and gloo on CPU, so the same code runs on both.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from components.compute.config import ComputeConfig
from components.compute.net import free_port
from components.compute.optim import StochasticRoundingAdamW
from components.io.atomic import atomic_dir
from components.models.loading import save_pretrained
from components.models.precision import (autocast, fp32_head_copies, freeze, hold_frozen_linears_in_bf16,
                                         parameters_to_bf16)

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) before the process group starts."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return world()[0] == 0


def init_distributed() -> None:
    """Start the process group once. A launcher's env vars are used as they are; otherwise a 1-process group on a
    free local port, given to torch directly: written into os.environ (MASTER_PORT, WORLD_SIZE), it was inherited by
    every process this one started later (an `rlhf run` from a test), which then took the stale port for its own."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    alone = "WORLD_SIZE" not in os.environ
    if is_rank0():
        log.info("starting DeepSpeed (%s, %s ranks); its first start on a machine compiles ops (1-2 min, cached)",
                 backend, 1 if alone else os.environ["WORLD_SIZE"])
    single = {"init_method": f"tcp://127.0.0.1:{free_port()}", "rank": 0, "world_size": 1} if alone else {}
    if alone:
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it; a child inheriting it changes nothing
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **single)


def ds_config(compute: ComputeConfig, lr: float, weight_decay: float, warmup_steps: int,
              total_steps: int, schedule: str = "cosine") -> dict[str, Any]:
    """The DeepSpeed JSON config for one training stage: AdamW, linear warmup, then cosine to 10% of lr
    (`schedule="cosine"`) or constant (`"constant"`, which does not depend on the run length, so a run
    can be extended by resuming)."""
    _, world_size = world()
    true_bf16 = compute.precision == "bf16-true"
    adamw = {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.95]}
    zero: dict[str, Any] = {"stage": compute.zero_stage}
    if compute.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if compute.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": compute.micro_batch_size,
        "gradient_accumulation_steps": compute.gradient_accumulation_steps,
        "train_batch_size": compute.micro_batch_size * compute.gradient_accumulation_steps * world_size,
        "gradient_clipping": 0.0 if true_bf16 else compute.gradient_clipping,  # bf16-true: in the optimizer's step
        "zero_optimization": zero,
        # bf16: matmuls under torch autocast, fp32 master weights and AdamW states (DeepSpeed's own "bf16" mode keeps
        # bf16 weights plus fp32 copies: more memory, and on CPU a 3.5x slower step; see components/models/precision).
        # bf16-true: bf16 weights and our StochasticRoundingAdamW (`initialize` builds it; DeepSpeed has no such type)
        "torch_autocast": {"enabled": compute.precision == "bf16", "dtype": "bfloat16"},
        "optimizer": ({"type": StochasticRoundingAdamW.__name__,
                       "params": {**adamw, "max_grad_norm": compute.gradient_clipping}} if true_bf16
                      else {"type": "AdamW", "params": adamw}),
        "scheduler": _scheduler(schedule, lr, warmup_steps, total_steps),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _scheduler(schedule: str, lr: float, warmup_steps: int, total_steps: int) -> dict[str, Any]:
    if schedule == "constant":  # WarmupLR holds warmup_max_lr after the warmup
        return {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0 if warmup_steps else lr, "warmup_max_lr": lr,
                                                "warmup_num_steps": max(warmup_steps, 1), "warmup_type": "linear"}}
    return {"type": "WarmupCosineLR", "params": {
        "total_num_steps": max(total_steps, 1), "warmup_num_steps": max(min(warmup_steps, total_steps), 1),
        "warmup_type": "linear", "warmup_min_ratio": 0.0, "cos_min_ratio": 0.1}}


def initialize(model: torch.nn.Module, config: dict[str, Any]):
    """Wrap `model` in a DeepSpeed engine (the process group must be started). With our StochasticRoundingAdamW
    as the optimizer type (precision bf16-true) the whole model is cast to bf16 and the optimizer is ours."""
    init_distributed()
    if config.get("torch_autocast", {}).get("enabled") and config["zero_optimization"]["stage"] != 3:
        hold_frozen_linears_in_bf16(model)  # a LoRA base: the same forwards under autocast, ~half its memory
    optimizer, spec = None, config.get("optimizer", {})
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.get("type") == StochasticRoundingAdamW.__name__:
        config = {k: v for k, v in config.items() if k != "optimizer"}
        parameters_to_bf16(model)
        optimizer = StochasticRoundingAdamW(params, **spec["params"])
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config, optimizer=optimizer)
    if world()[1] == 1 and engine.zero_optimization_stage() == 0:
        # One process has nothing to all-reduce, yet DeepSpeed still flattens every gradient into buckets and
        # copies it back after each backward (measured: ~0.7 s of a 2 s backward on SmolLM2-135M).
        engine.enable_backward_allreduce = False
    return engine


def inference(model: torch.nn.Module, compute: ComputeConfig):
    """A frozen model for no-grad forwards (reference, reward model): sharded by a ZeRO-3 engine without an
    optimizer when `compute.zero_stage == 3` (fp32 shards), else the module itself with its Linear weights in bf16
    under `precision: bf16` (run it under `precision.autocast`). Either way in eval mode."""
    if compute.zero_stage != 3:
        return freeze(model, compute.precision).eval()
    model.requires_grad_(False)
    init_distributed()
    config = {"train_micro_batch_size_per_gpu": compute.micro_batch_size, "zero_optimization": {"stage": 3},
              "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, unlike nn.Module.eval()
    return engine


@contextlib.contextmanager
def for_generation(engine):
    """The engine's module ready for HF `generate`. Under ZeRO-3 the parameters are gathered once for the whole
    generation and the per-module fetch hooks are removed meanwhile (otherwise every token re-gathers them).
    Under the engine's bf16 autocast, generation runs under it too; bf16 output heads use an fp32 copy."""
    module = getattr(engine, "module", engine)
    precision = "bf16" if getattr(engine, "torch_autocast_enabled", lambda: False)() else "fp32"
    with autocast(precision, next(module.parameters()).device):
        if getattr(engine, "zero_optimization_stage", lambda: 0)() == 3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
            with unwrap_model_for_generation(engine) as unwrapped:
                yield unwrapped.module
        else:
            with fp32_head_copies(module):  # bf16-true: the LM head cast once, not at every new token
                yield module


@contextlib.contextmanager
def gathered(module: torch.nn.Module):
    """Full parameters visible inside the block, also under ZeRO-3 (a no-op for stages 0-2)."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield module
    else:
        yield module


def save_hf(engine, tokenizer, out_dir: str | Path, extra_files: dict[str, str] | None = None,
            select: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m) -> None:
    """Save the engine's model (or the HF model `select(module)` returns) as a HF directory, atomically, on
    rank 0 (ZeRO-3 shards are gathered on every rank first). `extra_files` maps file names to text written
    beside the weights (e.g. metrics.json)."""
    with gathered(engine.module) as module:
        if is_rank0():
            with atomic_dir(out_dir) as tmp:
                save_pretrained(select(module), tokenizer, tmp)
                for name, text in (extra_files or {}).items():
                    (tmp / name).write_text(text)
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    """Every random stream training draws from (dropout, sampling, shuffles), so a resume continues exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, ckpt_dir: str | Path, tag: str, client_state: dict[str, Any] | None = None) -> None:
    """Engine state (weights, optimizer, scheduler), this rank's RNG states, and our `client_state`
    (e.g. iteration, data position, KL controller) as `tag`; older tags are removed once every rank has
    written this one (only the latest is ever resumed)."""
    # frozen parameters (a LoRA base: ~540 MB on SmolLM2) are left out: a resume rebuilds them from the stage's
    # input model, as the first start did (ZeRO-3 keeps them: its frozen shards are saved as fragments)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={**(client_state or {}), "rng": rng_state()},
                           exclude_frozen_parameters=engine.zero_optimization_stage() != 3)
    if dist.is_initialized():
        dist.barrier()
    if is_rank0():
        for old in Path(ckpt_dir).iterdir():
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def _load_all_but_frozen(src: dict[str, torch.Tensor], dst: torch.nn.Module) -> None:
    """Load a checkpoint's module state: every key but frozen parameters must be there, and nothing else."""
    frozen = {name for name, p in dst.named_parameters() if not p.requires_grad}
    result = dst.load_state_dict(src, strict=False)
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not fit the model: missing {missing[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")


def load_checkpoint(engine, ckpt_dir: str | Path, tag: str | None = None) -> dict[str, Any]:
    """Restore a checkpoint written by `save_checkpoint`, RNG states included; returns its client_state."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, custom_load_fn=_load_all_but_frozen)
    if path is None:
        raise FileNotFoundError(f"{ckpt_dir}: no DeepSpeed checkpoint (tag {tag or 'latest'})")
    set_rng_state(client_state.pop("rng"))
    return client_state
