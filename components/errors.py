"""Errors a user can act on. Each names the file, line or field at fault."""
from __future__ import annotations


class RLHFError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(RLHFError):
    """An invalid configuration value; raised before any work starts."""


class DataError(RLHFError):
    """Bad data in a dataset file. The message starts with `file:line:` when a line is known."""

    def __init__(self, source: str, message: str, line: int | None = None):
        self.source, self.line = source, line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class ModelLoadError(RLHFError):
    """A model or tokenizer that cannot be found or loaded."""


def bad_utf8_line(data: bytes) -> int:
    """The 1-based line of the first byte sequence in `data` that is not UTF-8 (1 when there is none)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data[:exc.start].count(b"\n") + 1
    return 1
