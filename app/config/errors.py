"""A pydantic ValidationError as one line a person can act on: `where: what; where: what`.

Start-up (settings, the registry) and the key CLI all report configuration errors this way.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

Locate = Callable[[list[int | str], str], list[int | str]]


def one_line(exc: ValidationError, locate: Locate | None = None) -> str:
    """`locate(loc, error_type)` may rewrite each error's location first."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = list(error["loc"])
        if locate is not None:
            loc = locate(loc, error["type"])
        where = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
