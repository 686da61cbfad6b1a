"""Logging set-up: one place decides the format and level."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_gateway", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._gateway = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("app").setLevel(level.upper())
    # httpx logs every upstream call at INFO; the gateway logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if root.level > logging.getLevelName(level.upper()):
        root.setLevel(level.upper())
