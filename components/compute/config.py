"""How a training stage runs: ZeRO stage, offload, precision, batch shape, clipping."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import StrictModel
from components.models.lora import LoRAConfig


class ComputeConfig(StrictModel):
    """DeepSpeed settings of one training stage. The same values run on CPU (gloo) and GPU (nccl)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage: 0 off, 1 optimizer, 2 +gradients, 3 +parameters sharded.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO stage >= 1).")
    offload_param: bool = Field(False, description="Keep parameters in CPU memory (ZeRO stage 3 only).")
    precision: Literal["fp32", "bf16", "bf16-true"] = Field("fp32", description="bf16: matmuls in bf16 under autocast, "
                                                          "with fp32 master weights, optimizer states and output "
                                                          "heads; frozen models (reference, reward model) hold bf16 "
                                                          "linear layers. bf16-true: weights, gradients and AdamW "
                                                          "moments in bf16 (stochastically rounded updates; output "
                                                          "heads computed in fp32), frozen models wholly bf16: about "
                                                          "half the memory (ZeRO stage 0). Both need bf16 hardware "
                                                          "(AVX-512 BF16 / AMX CPUs, Ampere+ GPUs).")
    micro_batch_size: int = Field(16, ge=1, description="Examples per forward pass on each process.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches summed before each optimizer step.")
    gradient_clipping: float = Field(1.0, ge=0.0, description="Clip the global gradient norm to this value; 0 disables.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, "
                                         "about a third more compute.")

    @model_validator(mode="after")
    def _compatible(self) -> "ComputeConfig":
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3, got zero_stage {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.precision == "bf16-true" and self.zero_stage != 0:  # ZeRO's fp32 partitions need DeepSpeed's bf16
            raise ValueError(f"precision bf16-true needs zero_stage 0, got zero_stage {self.zero_stage}")
        return self


class TrainingConfig(StrictModel):
    """What every training stage shares: DeepSpeed settings, AdamW and its schedule, loop cadence, seed."""

    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="DeepSpeed settings.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps, then cosine decay to 10% of lr.")
    epochs: int = Field(2, ge=1, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    eval_every: int = Field(50, ge=1, description="Evaluate on held-out data every N optimizer steps.")
    log_every: int = Field(10, ge=1, description="Report training metrics every N optimizer steps.")
    checkpoint_every: int = Field(100, ge=0, description="Save a resumable checkpoint every N optimizer steps (in "
                                  "the artifact store, under the stage's `_partial/`, removed once the stage's output "
                                  "is stored); a rerun resumes from it. 0: never.")
    seed: int = Field(0, description="Seed for init, shuffling and dropout.")
    lora: LoRAConfig | None = Field(None, description="Train LoRA adapters (peft) instead of all weights; the output "
                                    "is the merged model. Same shape as ppo.lora.")
