"""User code named in a config as `module:function` (the gold scorer, PPO's reward functions)."""
from __future__ import annotations

import importlib
from collections.abc import Callable

from components.errors import ConfigError


def load_function(path: str | None, field: str) -> Callable | None:
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


def importable(value: str | None, field: str) -> str | None:
    """A pydantic validator's body: `value` names a callable, else a ValueError without the field prefix (pydantic
    adds the field's location itself)."""
    try:
        load_function(value, field)  # checked at validation, before any work
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix(f"{field}: ")) from None
    return value
