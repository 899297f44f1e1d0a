"""Seeds derived from several integers, so a random stream depends on what it is for, never on what ran before."""
from __future__ import annotations

import numpy as np


def seed_for(*keys: int) -> int:
    """A seed derived from (seed, iteration, rank, ...)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
