"""How a training stage runs: ZeRO stage, offload, precision, batch shape, clipping."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import StrictModel


class ComputeConfig(StrictModel):
    """DeepSpeed settings of one training stage. The same values run on CPU (gloo) and GPU (nccl)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage: 0 off, 1 optimizer, 2 +gradients, 3 +parameters sharded.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO stage >= 1).")
    offload_param: bool = Field(False, description="Keep parameters in CPU memory (ZeRO stage 3 only).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision; bf16 needs hardware support.")
    micro_batch_size: int = Field(16, ge=1, description="Examples per forward pass on each process.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches summed before each optimizer step.")
    gradient_clipping: float = Field(1.0, ge=0.0, description="Clip the global gradient norm to this value; 0 disables.")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "ComputeConfig":
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3, got zero_stage {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self
