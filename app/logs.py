"""Logging set-up: JSON lines (python-json-logger) or plain text, at LOG_LEVEL."""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson
from pythonjsonlogger.json import JsonFormatter

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TextWithExtras(logging.Formatter):
    """Plain text for local runs, with the structured fields appended as key=value."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard}
        return line + "".join(f" {k}={v}" for k, v in extras.items()) if extras else line


def _orjson_dumps(obj: Any, **_: Any) -> str:
    # One access line per request: orjson writes it several times faster than json.dumps.
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str, fmt: Literal["json", "text"] = "json") -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_gateway", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                rename_fields={
                    "asctime": "time",
                    "levelname": "level",
                    "name": "logger",
                    "process": "pid",
                },
                json_serializer=_orjson_dumps,
            )
        )
    else:
        handler.setFormatter(_TextWithExtras(_TEXT))
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    logging.getLogger("app").setLevel(level.upper())
    if root.level > logging.getLevelName(level.upper()):
        root.setLevel(level.upper())
    # httpx logs every upstream call at INFO; the gateway logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The gateway writes its own access line (app.access), with what uvicorn's lacks.
    logging.getLogger("uvicorn.access").disabled = True
