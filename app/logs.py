"""Logging set-up: JSON lines or plain text, at LOG_LEVEL. With tracing on, a line written
while a span is current (every request's access line) carries its `trace_id` and `span_id`."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import orjson

from app import tracing

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and is a field.
# uvicorn adds `color_message` (its message with ANSI colours) for its own formatter: not a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
}


class _JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, pid, message, then the extras.

    Written for the access line every request logs: python-json-logger, with orjson as its
    serialiser, still spent ~40 % of a line's cost sorting out which attributes were extras.
    """

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        line: dict[str, Any] = {
            "time": f"{_utc_second(seconds)}.{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD:
                line[name] = value
        traced = tracing.active
        if traced is not None and (ids := traced.log_fields()) is not None:
            line.update(ids)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


_second_cache: tuple[int, str] = (-1, "")


def _utc_second(seconds: int) -> str:
    """`2026-01-31T12:00:00` for a Unix second, formatted once per second, not once per line."""
    global _second_cache
    if _second_cache[0] != seconds:
        _second_cache = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return _second_cache[1]


class _TextWithExtras(logging.Formatter):
    """Plain text for local runs, with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        traced = tracing.active
        if traced is not None and (ids := traced.log_fields()) is not None:
            extras.update(ids)
        return line + "".join(f" {k}={v}" for k, v in extras.items()) if extras else line


def formatter(fmt: Literal["json", "text"] = "json") -> logging.Formatter:
    """The gateway's line format; also what uvicorn_log_config hands uvicorn's own loggers."""
    return _JsonLines() if fmt == "json" else _TextWithExtras(_TEXT)


def uvicorn_log_config(level: str, fmt: Literal["json", "text"] = "json") -> dict[str, Any]:
    """uvicorn's `log_config`: its own lines (start-up, shutdown, bind errors) in our format.

    uvicorn applies this in its supervisor too, which never imports the app (and so never runs
    configure_logging) when WORKERS > 1, and again in every worker. Only uvicorn's loggers are
    set here; the root logger, and so the app's lines, stay configure_logging's.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": formatter, "fmt": fmt}},
        "handlers": {"gateway": {"class": "logging.StreamHandler", "formatter": "gateway"}},
        "loggers": {
            "uvicorn": {"handlers": ["gateway"], "level": level.upper(), "propagate": False},
            # The gateway writes its own access line (app.access), with what uvicorn's lacks.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure_logging(level: str, fmt: Literal["json", "text"] = "json") -> None:
    # The logging HOWTO's "Optimization": no caller lookup (a stack walk per record) and no
    # thread or multiprocessing names, which no line shows.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_gateway", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    logging.getLogger("app").setLevel(level.upper())
    if root.level > logging.getLevelName(level.upper()):
        root.setLevel(level.upper())
    # The gateway writes its own access line (app.access), with what uvicorn's lacks.
    logging.getLogger("uvicorn.access").disabled = True
