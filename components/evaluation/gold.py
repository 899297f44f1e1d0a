"""The gold scorer: an independent judge of responses (not the reward model), named as `module:function`.

The demo's is `components.data.gold:gold_scores`; users plug in their own with `evaluate.gold_fn`. It is called
as `fn(prompts, responses) -> list[float]`, by PPO's held-out evaluations and by the evaluation stage.
"""
from __future__ import annotations

from collections.abc import Callable

from components.config.functions import load_function

DEMO_GOLD = "components.data.gold:gold_scores"


def load_gold(path: str | None, field: str = "evaluate.gold_fn") -> Callable[[list[str], list[str]], list[float]] | None:
    """The gold scorer `module:function` names (None for None); a bad name is a ConfigError naming `field`."""
    return load_function(path, field)
