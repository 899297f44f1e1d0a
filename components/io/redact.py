"""Credentials inside URLs (`http://user:password@host`) never printed or stored: the user information is replaced."""
from __future__ import annotations

import re
from typing import Any

USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the user information of every URL in it replaced by `***`."""
    return USERINFO.sub(r"\g<scheme>***@", text)


def has_userinfo(url: str) -> bool:
    return USERINFO.search(url) is not None


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value
