"""Input lines in, output and error lines out: the JSON Lines formats of the Batch API.

An input line is `{custom_id, method: "POST", url: "/v1/embeddings", body}`; the structure is
checked here, the body by the embeddings endpoint's own checks (app/core/embedding_request.py).
Lines are numbered from 1, as `errors.data[].line`; a blank line is skipped but still counted,
so numbers match the file as an editor shows it.

Output and error lines share one shape: `{id, custom_id, response: {status_code, request_id,
body} | null, error: {code, message} | null}`. A request the gateway answered (200, or an error
status) has `response`; one never run (cancelled, expired) has `error`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.batches.records import BatchError

MAX_CUSTOM_ID = 512
DUPLICATE_MESSAGE = (
    "The custom_id for this request is a duplicate of another request. The custom_id "
    "parameter must be unique for each request in a batch."
)
EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}


# Not frozen: a frozen dataclass's __init__ is ~3x as slow, and there is one per line.
@dataclass(slots=True)
class RawLine:
    number: int  # 1-based
    start: int  # byte offset of the line in the file
    end: int  # offset just past its newline (or the file's end)
    data: bytes | None  # None: longer than the limit (not kept)


@dataclass(slots=True)
class InputLine:
    number: int
    custom_id: str
    body: dict[str, Any]


def is_blank(data: bytes) -> bool:
    return not data.strip()


async def split_lines(chunks: AsyncIterator[bytes], max_line: int) -> AsyncIterator[list[RawLine]]:
    """The lines of a stream, with their offsets, a list for each piece of the stream (one
    `async for` step per piece, not per line); a line over `max_line` bytes is not kept (its
    `data` is None). Memory stays at one piece's lines plus one line, and each byte is copied
    once."""
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    pending_bytes = 0
    too_long = False  # the pending line is over the limit already: its bytes are dropped
    start = 0  # file offset of the line being read
    number = 1
    async for chunk in chunks:
        lines: list[RawLine] = []
        position = 0
        while True:
            newline = chunk.find(b"\n", position)
            if newline < 0:
                break
            end = start + pending_bytes + newline - position + 1
            size = pending_bytes + newline - position
            if too_long or size > max_line:
                lines.append(RawLine(number, start, end, None))
            else:
                data = chunk[position:newline]
                if pending:
                    data = b"".join([*pending, data])
                lines.append(RawLine(number, start, end, data))
            pending, pending_bytes, too_long = [], 0, False
            start, number, position = end, number + 1, newline + 1
        rest = len(chunk) - position
        if rest:
            pending_bytes += rest
            if too_long or pending_bytes > max_line:
                too_long, pending = True, []
            else:
                pending.append(chunk[position:])
        if lines:
            yield lines
    if pending_bytes:
        last = None if too_long else b"".join(pending)
        yield [RawLine(number, start, start + pending_bytes, last)]


def chunk_lines(data: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """The numbered, non-blank lines of a chunk's bytes (whole lines, as planned)."""
    for offset, line in enumerate(data.split(b"\n")):
        if not is_blank(line):
            yield first_line + offset, line


def parse_line(data: bytes, number: int, endpoint: str) -> InputLine | BatchError:
    """The line's structure (not its body's fields): an InputLine, or the error to report."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return BatchError(
            "invalid_json_line", "This line is not parseable as valid JSON.", None, number
        )
    if not isinstance(value, dict):
        return BatchError("invalid_json_line", "This line is not a JSON object.", None, number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in value:
            return BatchError(
                "missing_required_parameter",
                f"Missing required parameter: '{name}'.",
                name,
                number,
            )
    custom_id = value["custom_id"]
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        return BatchError(
            "invalid_custom_id",
            f"'custom_id' must be a string of 1 to {MAX_CUSTOM_ID} characters.",
            "custom_id",
            number,
        )
    if value["method"] != "POST":
        return BatchError("invalid_method", "'method' must be 'POST'.", "method", number)
    if value["url"] != endpoint:
        return BatchError(
            "invalid_url",
            "The URL provided for this request does not match the batch endpoint.",
            "url",
            number,
        )
    body = value["body"]
    if not isinstance(body, dict):
        return BatchError(
            "invalid_request", "'body' must be an embeddings request object.", "body", number
        )
    return InputLine(number, custom_id, body)


def output_line(line_id: str, custom_id: str, request_id: str, body: bytes) -> bytes:
    """A 200's line: `body` is the synchronous endpoint's response, embedded as it is."""
    return _line(
        line_id,
        custom_id,
        {"status_code": 200, "request_id": request_id, "body": orjson.Fragment(body)},
        None,
    )


def output_line_of(line_id: str, custom_id: str, request_id: str, payload: dict[str, Any]) -> bytes:
    """`output_line` for a body not serialised yet (`embeddings_payload`): the line and its
    body in one pass, the body's bytes those `embeddings_body` makes of it."""
    return orjson.dumps(
        {
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": payload},
            "error": None,
        },
        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
    )


def error_response_line(
    line_id: str, custom_id: str, request_id: str, status: int, body: bytes
) -> bytes:
    """A request the gateway answered with an error: its status and OpenAI-shaped body."""
    response = {"status_code": status, "request_id": request_id, "body": orjson.Fragment(body)}
    return _line(line_id, custom_id, response, None)


def not_run_line(line_id: str, custom_id: str, error: dict[str, str]) -> bytes:
    """A request never run (EXPIRED, CANCELLED)."""
    return _line(line_id, custom_id, None, error)


def _line(
    line_id: str, custom_id: str, response: dict[str, Any] | None, error: dict[str, str] | None
) -> bytes:
    return (
        orjson.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": error})
        + b"\n"
    )
