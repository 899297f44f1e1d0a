"""The gold scorer: an independent judge of responses (not the reward model), named as `module:function`.

The demo's is `components.data.gold:gold_scores`; users plug in their own with `evaluate.gold_fn`. It is called
as `fn(prompts, responses) -> list[float]`, by PPO's held-out evaluations and by the evaluation stage.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from components.errors import ConfigError

DEMO_GOLD = "components.data.gold:gold_scores"


def load_gold(path: str | None, field: str = "evaluate.gold_fn") -> Callable[[list[str], list[str]], list[float]] | None:
    """The callable `module:function` names (None for None); a bad name is a ConfigError naming `field`."""
    if path is None:
        return None
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"{field}: {path!r} is not of the form module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module!r}: {exc}") from exc
    except AttributeError:
        raise ConfigError(f"{field}: module {module!r} has no {name!r}") from None
    if not callable(fn):
        raise ConfigError(f"{field}: {path!r} is not callable")
    return fn
