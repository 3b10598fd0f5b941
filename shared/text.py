"""The one rule for text that reaches PostgreSQL: what it cannot store, and what to do about it.

PostgreSQL's ``text`` (and ``jsonb`` strings) cannot hold U+0000, and UTF-8, the database's
encoding, cannot carry an unpaired surrogate (U+D800..U+DFFF on its own), which JSON's
``\\ud800`` escape produces. Either one makes the INSERT fail.

* Requests from our clients are refused (422 naming the field): :func:`unstorable_path`,
  which :func:`shared.web.validate` applies to every body and query it validates.
* Data we must accept as sent (Clerk's webhook payloads, token claims, model output) is
  normalised instead: :func:`storable` drops NUL and replaces each unpaired surrogate with
  U+FFFD, the replacement character.
"""

from __future__ import annotations

import re
from typing import Any

UNSTORABLE_TEXT = "text must not contain NUL (U+0000) or unpaired surrogates (U+D800-U+DFFF)"

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_storable(text: str) -> bool:
    if "\x00" in text:
        return False
    return text.isascii() or _SURROGATE.search(text) is None


def storable(text: str) -> str:
    """The text without NUL, each unpaired surrogate replaced by U+FFFD."""
    if is_storable(text):
        return text
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def storable_json(value: Any) -> Any:
    """A JSON value with every string (keys too) made :func:`storable`."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(key)): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value


def unstorable_path(value: Any) -> str | None:
    """The dotted path of the first string PostgreSQL cannot store, or None if all can be.

    Iterative, so it is safe on any depth (callers bound the depth anyway).
    """
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if not is_storable(item):
                return path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not is_storable(key):
                    return path or "body"
                pending.append((child, name))
        elif isinstance(item, list):
            pending.extend(
                (child, f"{path}.{index}" if path else str(index))
                for index, child in enumerate(item)
            )
    return None
