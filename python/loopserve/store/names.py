"""Names users give to things in the store (models, aliases, tags, experiments)."""

from __future__ import annotations

import re

from loopserve.errors import LoopserveError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidName(LoopserveError, ValueError):
    pass


def validate_name(kind: str, name: str) -> str:
    """Return `name` if it is safe as a name and a path component, else raise InvalidName.

    Allowed: 1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or
    digit, and no '..' (so no path traversal, no control characters, no separators).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid {kind} name {name!r}: expected 1-128 characters of letters, digits, "
                          f"'.', '_' or '-', starting with a letter or digit, without '..'")
    return name
