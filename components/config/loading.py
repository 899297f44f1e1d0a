"""Load a `PipelineConfig` from YAML plus `a.b=c` overrides; errors name the file, line and field."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from components.config.pipeline import PipelineConfig
from components.errors import ConfigError, bad_utf8_line


def parse_overrides(items: list[str]) -> dict[tuple[str, ...], Any]:
    """Parse `["sft.lr=2e-5", ...]` into `{("sft", "lr"): 2e-05}`. Values are read as YAML scalars."""
    out: dict[tuple[str, ...], Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sft.lr=2e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        out[tuple(key.strip().split("."))] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML at `path` (or start from defaults), apply overrides, validate.

    Raises ConfigError whose message reads `configs/demo.yaml:12: sft.lr: Input should be greater than 0`.
    """
    raw: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        text = _read(Path(path))
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text), source)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return _validated(raw, overrides or [], source, lines)


def with_overrides(config: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    """`config` with `a.b=c` overrides applied and validated again (errors name the override)."""
    return _validated(config.model_dump(mode="json"), overrides, "overrides", {})


def _validated(raw: dict[str, Any], overrides: list[str], source: str, lines: dict) -> PipelineConfig:
    set_keys = parse_overrides(overrides)
    for key, value in set_keys.items():
        _assign(raw, key, value, source)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines, set_keys)) from None


def _read(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}:{bad_utf8_line(path.read_bytes())}: not UTF-8 text (byte {exc.start}: "
                          f"{exc.reason})") from None


def _assign(raw: dict, key: tuple[str, ...], value: Any, source: str) -> None:
    node = raw
    for part in key[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(key)}: {part!r} in {source} is not a section")
        node = child
    node[key[-1]] = value


def _key_lines(node: yaml.Node, source: str, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path of a composed YAML document to its 1-based line. A key given twice in one mapping is an
    error (YAML loaders keep the last one silently)."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            if path in found:
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: {'.'.join(path)}: duplicate key (first "
                                  f"given on line {found[path]})")
            found[path] = key_node.start_mark.line + 1
            found.update(_key_lines(value_node, source, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = prefix + (str(i),)
            found[path] = item.start_mark.line + 1
            found.update(_key_lines(item, source, path))
    return found


def _describe(exc: ValidationError, source: str, lines: dict, set_keys: dict) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = ".".join(loc) or "<root>"
        if loc in set_keys:
            where = f"--set {field}"
        else:
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            where = f"{source}:{line}" if line else source
        msgs.append(f"{where}: {field}: {err['msg']}")
    return "invalid configuration\n  " + "\n  ".join(msgs)
