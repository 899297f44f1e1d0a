"""Where a model comes from: a name or path, or an architecture built from scratch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import StrictModel


class ArchSpec(StrictModel):
    """A small model built from a config with random weights (the demo has no hub to download from)."""

    type: Literal["gpt2", "llama"] = Field("gpt2", description="Architecture family of the transformers config.")
    n_layer: int = Field(2, ge=1, le=64, description="Number of transformer blocks.")
    hidden_size: int = Field(128, ge=8, description="Width of the residual stream.")
    n_head: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    max_positions: int = Field(128, ge=8, description="Longest sequence the position embeddings cover.")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width; default 4 x hidden_size.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ArchSpec":
        if self.hidden_size % self.n_head:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by n_head={self.n_head}")
        return self


class ModelSpec(StrictModel):
    """Exactly one of `name_or_path` (hub id, local dir, s3:// dir, .gguf file) or `arch` (build from scratch)."""

    name_or_path: str | None = Field(None, description="HF hub id, local save_pretrained dir, s3://bucket/prefix "
                                     "dir, or a .gguf file (imported once into the cache).")
    arch: ArchSpec | None = Field(None, description="Architecture to build with random weights instead of loading.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when loading a hub id.")
    trust_remote_code: bool = Field(False, description="Allow code from the model repository to run. Off by default.")
    resize_embeddings: bool = Field(False, description="Add (random) embedding rows when the tokenizer has more "
                                    "tokens than the model; off: that mismatch is an error.")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.name_or_path is None) == (self.arch is None):
            raise ValueError("set exactly one of name_or_path or arch")
        return self


class ScorerSpec(ModelSpec):
    """A trained sequence classifier used as the reward: a reward model (one label) or an off-the-shelf
    classifier whose `label_index` logit means "good" (e.g. the positive class of a sentiment model)."""

    label_index: int | str | None = Field(None, description="Logit read as the reward, by index or label name "
                                          "(e.g. POSITIVE); required when the model has more than one label.")
