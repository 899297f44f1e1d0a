"""Credentials inside URLs (`http://user:password@host`) never printed or stored: the user information is replaced."""
from __future__ import annotations

import re

USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the user information of every URL in it replaced by `***`."""
    return USERINFO.sub(r"\g<scheme>***@", text)


def has_userinfo(url: str) -> bool:
    return USERINFO.search(url) is not None
