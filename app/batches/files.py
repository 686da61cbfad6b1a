"""The Files API's work: uploads streamed into the object store, records, listing, content, deletion
and expiry. Every file belongs to the key that uploaded it (or, for outputs, created its batch):
any other key is told it does not exist.

An upload is streamed straight into the object store (app/state/object_store.py) as it arrives:
its size is counted on the way and an upload past BATCH_MAX_FILE_BYTES aborts before anything
is stored (the store never shows a partial object), and its bytes are checked as UTF-8 on the
way too. Only then does it get a record. OpenAI accepts malformed lines at upload; so do we:
lines are checked when a batch is created from the file (app/batches/validation.py).
"""

from __future__ import annotations

import codecs
import logging
import posixpath
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from app.batches.errors import FileNotFound, FileTooLarge, InvalidUpload
from app.batches.records import FilePurpose, FileRecord, new_file_id
from app.batches.store import BatchStore
from app.config.settings import Settings
from app.state.object_store import ObjectMissing, ObjectStore

log = logging.getLogger("app.batches")

MIN_EXPIRES_AFTER = 3600
MAX_EXPIRES_AFTER = 30 * 86_400
MAX_FILENAME = 255
MAX_LIST = 10_000


@dataclass(frozen=True, slots=True)
class Staged:
    """An upload's bytes, stored, not yet a file (its form's other fields may come after it)."""

    file_id: str
    key: str
    bytes: int


class Files:
    def __init__(
        self,
        store: BatchStore,
        objects: ObjectStore,
        settings: Settings,
        clock: Callable[[], float],
        *,
        in_use: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._store = store
        self._in_use = in_use
        self._objects = objects
        self._max_bytes = settings.BATCH_MAX_FILE_BYTES
        self._retention = settings.BATCH_FILE_RETENTION_SECONDS
        self._clock = clock

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def stage(self, chunks: AsyncIterable[bytes]) -> Staged:
        """Store what `chunks` yields under a new file id. FileTooLarge past the cap and
        InvalidUpload for bytes that are not UTF-8, with nothing stored either way."""
        file_id = new_file_id()
        key = f"files/{file_id}"
        size = 0
        decoder = codecs.getincrementaldecoder("utf-8")("strict")

        async def checked() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if size > self._max_bytes:
                    raise FileTooLarge(self._max_bytes)
                _utf8(decoder, chunk, size - len(chunk))
                yield chunk
            _utf8(decoder, b"", size, final=True)

        await self._objects.put_stream(key, checked())
        return Staged(file_id, key, size)

    async def commit(
        self,
        owner: str,
        staged: Staged,
        filename: str,
        purpose: str | None,
        expires_after: int | None,
    ) -> FileRecord:
        """The staged upload as a file of `owner`'s; InvalidUpload for a form the Batch API
        cannot take (the caller then discards the staged bytes)."""
        filename = _basename(filename)
        if purpose is None:
            raise InvalidUpload("Missing required parameter: 'purpose'.", param="purpose")
        if purpose != "batch":
            raise InvalidUpload(
                f"The purpose '{purpose[:40]}' is not supported by this gateway: upload files "
                "with purpose 'batch' (the Batch API's input).",
                param="purpose",
            )
        if not filename.lower().endswith(".jsonl"):
            raise InvalidUpload("Invalid file format for Batch API. Must be .jsonl", param="file")
        now = int(self._clock())
        record = FileRecord(
            id=staged.file_id,
            owner=owner,
            purpose="batch",
            filename=filename,
            bytes=staged.bytes,
            created_at=now,
            expires_at=now + (expires_after if expires_after is not None else self._retention),
            object_key=staged.key,
        )
        await self._store.put_file(record)
        log.info(
            "file uploaded",
            extra={"file_id": record.id, "key_id": owner, "bytes": record.bytes},
        )
        return record

    async def discard(self, staged: Staged) -> None:
        await self._objects.delete(staged.key)

    async def get(self, owner: str | None, file_id: str) -> FileRecord:
        """The file, if `owner` (None: any owner, for the console) may see it."""
        record = await self._store.get_file(file_id)
        if record is None or (owner is not None and record.owner != owner):
            raise FileNotFound(file_id)
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise FileNotFound(file_id)  # expired: the sweep removes it soon
        return record

    async def list(
        self,
        owner: str,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> tuple[list[FileRecord], bool]:
        if purpose not in (None, "batch", "batch_output"):
            return [], False  # no file of ours has any other purpose
        known: FilePurpose | None = purpose  # type: ignore[assignment]
        return await self._store.list_files(owner, known, after, limit, order == "asc")

    async def delete(self, owner: str, file_id: str) -> None:
        record = await self.get(owner, file_id)
        await self._remove(record)

    async def content(
        self, owner: str | None, file_id: str
    ) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """The file and its bytes as a stream: an upload's object, or an output's parts in
        order. The first chunk is read before returning, so a missing object is a 404, not a
        response that breaks off."""
        record = await self.get(owner, file_id)
        stream = self._bytes(record)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except ObjectMissing:
            raise FileNotFound(file_id) from None
        return record, _prepend(first, stream)

    async def _bytes(self, record: FileRecord) -> AsyncIterator[bytes]:
        if record.object_key is not None:
            async for chunk in self._objects.stream(record.object_key):
                yield chunk
            return
        for part in record.parts:
            async for chunk in self._objects.stream(part.key, part.start, part.start + part.length):
                yield chunk

    async def sweep_expired(self, limit: int = 100) -> int:
        """Remove files past their `expires_at` (records, then their objects)."""
        expired = await self._store.expired_files(int(self._clock()), limit)
        for record in expired:
            await self._remove(record)
        return len(expired)

    async def _remove(self, record: FileRecord) -> None:
        await self._store.delete_file(record)
        keys = [record.object_key] if record.object_key else [p.key for p in record.parts]
        if record.purpose == "batch" and await self._in_use(record.id):
            keys = []  # a running batch still reads it: removed at that batch's end
        await self._objects.delete(*keys)
        log.info("file deleted", extra={"file_id": record.id, "key_id": record.owner})


def parse_expires_after(anchor: str | None, seconds: str | None) -> int | None:
    """`expires_after[anchor]` and `expires_after[seconds]` as the SDKs send them (form fields):
    the seconds, or None when neither was sent."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidUpload(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    if seconds is None or not seconds.strip().isdigit():
        raise InvalidUpload(
            "expires_after[seconds] must be an integer number of seconds.",
            param="expires_after.seconds",
        )
    value = int(seconds)
    if not MIN_EXPIRES_AFTER <= value <= MAX_EXPIRES_AFTER:
        raise InvalidUpload(
            f"expires_after[seconds] must be between {MIN_EXPIRES_AFTER} and {MAX_EXPIRES_AFTER}.",
            param="expires_after.seconds",
        )
    return value


def _basename(filename: str) -> str:
    name = posixpath.basename(filename.replace("\\", "/")).strip()
    return name[:MAX_FILENAME] or "upload"


def _utf8(
    decoder: codecs.IncrementalDecoder, chunk: bytes, offset: int, final: bool = False
) -> None:
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError as exc:
        raise InvalidUpload(
            f"The file is not UTF-8: byte {offset + exc.start} cannot be decoded. Batch input "
            "files are JSON Lines, which are UTF-8.",
            param="file",
        ) from None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
