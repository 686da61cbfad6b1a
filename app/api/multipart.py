"""`multipart/form-data` with one file, streamed: the file's bytes go on as they arrive (to the
object store, app/batches/files.py), never held whole and never spooled to a temporary file as
Starlette's form parser would; the other fields are small and kept.

Parsed by `python-multipart` (Starlette's own parser, driven here without its spooling). The SDKs
send the fields in either order — Python's `purpose` first, Node's `file` first — so the fields
are only known once the whole body has been read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.batches.errors import InvalidUpload

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


class StreamedForm:
    """Read with `file_bytes()`; then `fields`, `filename` and `has_file` are known."""

    def __init__(self, content_type: str | None, body: AsyncIterator[bytes], file_field: str):
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidUpload(
                "Send the file as multipart/form-data (with a boundary), as the OpenAI SDKs do.",
                param="file",
            )
        self._body = body
        self._file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.has_file = False
        self._ended = False
        # The part being read: its headers, name, whether it is the file, its data.
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._in_file = False
        self._value = bytearray()
        self._file_data: list[bytes] = []  # the file's bytes parsed from the latest body chunk
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks, max_header_size=MAX_HEADER_BYTES)

    async def file_bytes(self) -> AsyncIterator[bytes]:
        """The file part's bytes as the body arrives; reads the body to its end."""
        async for chunk in self._body:
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise _broken(str(exc)) from None
            if self._file_data:
                data, self._file_data = self._file_data, []
                yield b"".join(data)
        if not self._ended:
            raise _broken("the body ended before the closing boundary")

    # -- python-multipart's callbacks --------------------------------------------------------

    def _part_begin(self) -> None:
        self._disposition, self._name, self._in_file = b"", "", False
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise _broken("a part has no name in its Content-Disposition")
        self._name = name.decode("utf-8", "replace")
        if self._name == self._file_field:
            if self.has_file:
                raise InvalidUpload("Send one file per upload.", param=self._file_field)
            raw_filename = options.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
            self.has_file = self._in_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidUpload(f"The form has more than {MAX_FIELDS} fields.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidUpload(
                f"The form field '{self._name[:40]}' is longer than {MAX_FIELD_BYTES} bytes."
            )

    def _part_end(self) -> None:
        if not self._in_file:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
        self._in_file = False

    def _end(self) -> None:
        self._ended = True


def _broken(detail: str) -> InvalidUpload:
    return InvalidUpload(f"The multipart/form-data body is malformed: {detail}.", param="file")
