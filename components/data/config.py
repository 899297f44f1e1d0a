"""The data prep stage's config: the embedded demo task, or the user's own dataset files."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import StrictModel

Format = Literal["auto", "prompt_completion", "messages", "preference", "hh", "ranking", "prompt"]


class DatasetSource(StrictModel):
    """One dataset: a local file, an s3:// object, or a Hugging Face hub dataset id."""

    path: str = Field(description="JSONL/Parquet/CSV path, s3://bucket/key, or a hub dataset id.")
    split: str = Field("train", description="Split to read when `path` is a hub dataset id.")
    format: Format = Field("auto", description="TRL dataset format; `auto` infers it from the columns.")


class DemoDataConfig(StrictModel):
    """Sizes of the generated review task (see components/data/demo.py)."""

    n_sft_train: int = Field(3000, ge=1, description="Prompt/completion pairs to fine-tune on.")
    n_sft_eval: int = Field(300, ge=1, description="Held-out prompt/completion pairs for eval loss.")
    n_pref_train: int = Field(3000, ge=1, description="Preference pairs labelled by the gold scorer, with noise.")
    n_pref_eval: int = Field(400, ge=1, description="Held-out preference pairs with noise-free gold labels.")
    n_eval_prompts: int = Field(64, ge=1, description="Held-out prompts for policy evaluation.")
    label_noise: float = Field(0.1, ge=0.0, lt=0.5, description="Fraction of training pairs whose label is flipped.")
    vocab_size: int = Field(1024, ge=300, le=65536, description="Size of the BPE tokenizer trained on the corpus.")
    tokenizer: str | None = Field(None, description="Use this tokenizer (hub id, dir, s3:// dir, .gguf) instead of "
                                  "training one, e.g. the pretrained model's own.")
    chat: bool = Field(False, description="Render the task as chat turns (TRL's conversational format) with the "
                       "tokenizer's chat template.")


class FilesDataConfig(StrictModel):
    """The user's own datasets, in any of TRL's formats."""

    sft_train: DatasetSource = Field(description="Supervised examples (prompt/completion or messages).")
    sft_eval: DatasetSource | None = Field(None, description="Held-out supervised examples; default: 5% of sft_train.")
    preference_train: DatasetSource = Field(description="Preference pairs (prompt/chosen/rejected, HH, or ranking).")
    preference_eval: DatasetSource | None = Field(None, description="Held-out pairs; default: 5% of preference_train.")
    eval_prompts: DatasetSource | None = Field(None, description="Prompts for evaluation; default: sft_eval prompts.")
    tokenizer: str = Field(description="Tokenizer to use: hub id, local dir or s3:// dir.")


class DataConfig(StrictModel):
    """Data prep: writes standard JSONL splits, a tokenizer and a manifest whose hash is the fingerprint."""

    source: Literal["demo", "files"] = Field("demo", description="`demo` generates the review task; `files` reads `files`.")
    seed: int = Field(0, description="Seed for generation, shuffling and label noise.")
    demo: DemoDataConfig = Field(default_factory=DemoDataConfig, description="Demo task sizes (source=demo).")
    files: FilesDataConfig | None = Field(None, description="User datasets (source=files).")
    max_prompt_length: int = Field(32, ge=1, description="Longest prompt in tokens.")
    max_length: int = Field(64, ge=2, description="Longest prompt + response in tokens.")
    prompt_length_policy: Literal["error", "truncate", "drop"] = Field(
        "error", description="A prompt over max_prompt_length: fail naming the line, keep its last tokens, or drop it.")
    cache_dir: str = Field(".rlhf/cache", description="Where s3:// and hub downloads are cached.")

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.source == "files" and self.files is None:
            raise ValueError("source is 'files' but the `files` section is missing")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length={self.max_prompt_length} leaves no room under max_length={self.max_length}")
        return self
