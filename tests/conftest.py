"""Shared fixtures. No network: the hub is off, Prefect analytics are off."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402

from components.data import demo  # noqa: E402
from components.data.tokenizer import train_bpe  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    """A small BPE tokenizer trained on demo reviews (seconds), for tests that only tokenise."""
    rng = random.Random(0)
    texts = [r["prompt"] + r["completion"] for r in demo.sft_examples(rng, 300, held_out=False)]
    return train_bpe(texts, 400)
