"""`POST /batches`'s body, checked as OpenAI checks it (400s with `param` and `code`), plus our
extension: `completion_window` may be any duration such as `30m`, `2h` or `7d`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.batches.errors import InvalidBatchRequest
from app.batches.records import ENDPOINT

# OpenAI's endpoints: the others get a clear "not supported here", not "invalid".
OPENAI_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MIN_WINDOW = 60
_DURATION = re.compile(r"^([1-9][0-9]{0,7})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MIN_OUTPUT_EXPIRES = 3600
MAX_OUTPUT_EXPIRES = 30 * 86_400


@dataclass(frozen=True, slots=True)
class CreateBatch:
    input_file_id: str
    completion_window: str
    window_seconds: int
    metadata: dict[str, str] | None
    output_expires_after: int | None


def parse_create(body: Any, max_window: int) -> CreateBatch:
    if not isinstance(body, dict):
        raise InvalidBatchRequest("The request body must be a JSON object.", param=None)
    file_id = body.get("input_file_id")
    if file_id is None:
        raise _missing("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise InvalidBatchRequest(
            "'input_file_id' must be a file id.", param="input_file_id", code="invalid_type"
        )
    endpoint = body.get("endpoint")
    if endpoint is None:
        raise _missing("endpoint")
    if endpoint != ENDPOINT:
        if endpoint in OPENAI_ENDPOINTS:
            message = (
                f"The endpoint '{endpoint}' is not supported by this gateway's Batch API: it runs "
                f"'{ENDPOINT}' batches only."
            )
        else:
            shown = str(endpoint)[:80]
            message = f"Invalid value: '{shown}'. Supported values are: '{ENDPOINT}'."
        raise InvalidBatchRequest(message, param="endpoint")
    window = body.get("completion_window")
    if window is None:
        raise _missing("completion_window")
    seconds = _window(window, max_window)
    return CreateBatch(
        input_file_id=file_id,
        completion_window=window,
        window_seconds=seconds,
        metadata=_metadata(body.get("metadata")),
        output_expires_after=_output_expires(body.get("output_expires_after")),
    )


def _missing(param: str) -> InvalidBatchRequest:
    return InvalidBatchRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _window(value: Any, max_window: int) -> int:
    found = _DURATION.match(value) if isinstance(value, str) else None
    seconds = int(found.group(1)) * _UNIT[found.group(2)] if found else 0
    if not MIN_WINDOW <= seconds <= max_window:
        shown = str(value)[:40]
        raise InvalidBatchRequest(
            f"Invalid value for 'completion_window': '{shown}'. Use '24h', or (this gateway's "
            f"extension) a duration such as '30m', '2h' or '7d', from {MIN_WINDOW}s to "
            f"{max_window}s.",
            param="completion_window",
        )
    return seconds


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidBatchRequest(
            "'metadata' must be an object of string values.", param="metadata", code="invalid_type"
        )
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidBatchRequest(
            f"'metadata' may have at most {MAX_METADATA_PAIRS} pairs.", param="metadata"
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidBatchRequest(
                f"A metadata key may have at most {MAX_METADATA_KEY} characters.",
                param=f"metadata.{key[:MAX_METADATA_KEY]}",
            )
        if not isinstance(item, str):
            raise InvalidBatchRequest(
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidBatchRequest(
                f"A metadata value may have at most {MAX_METADATA_VALUE} characters.",
                param=f"metadata.{key}",
            )
    return dict(value)


def _output_expires(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise InvalidBatchRequest(
            '\'output_expires_after\' must be {"anchor": "created_at", "seconds": N}.',
            param="output_expires_after.anchor",
        )
    seconds = value.get("seconds")
    if type(seconds) is not int or not MIN_OUTPUT_EXPIRES <= seconds <= MAX_OUTPUT_EXPIRES:
        raise InvalidBatchRequest(
            f"'output_expires_after.seconds' must be an integer from {MIN_OUTPUT_EXPIRES} to "
            f"{MAX_OUTPUT_EXPIRES}.",
            param="output_expires_after.seconds",
        )
    return seconds
