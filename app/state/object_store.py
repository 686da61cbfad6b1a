"""Where the Batch API keeps its files: a local directory (the default) or an S3-compatible bucket
(AWS S3, MinIO, GCS through its S3 API), for several replicas.

Through `obstore`, the Python binding of the Rust `object_store` crate (the one Arrow, DataFusion
and Polars use), rather than `aioboto3`:
- one API, and so one code path here, for a local directory and for S3; aioboto3 speaks S3 only,
  and the local directory would be a second implementation that the S3 tests never exercise;
- streaming both ways without holding a file in memory: a put from an async iterator goes up as
  a multipart upload of bounded parts (`_PART_BYTES` x `_PART_CONCURRENCY` in flight at most),
  a get comes back as a stream of chunks;
- every put is atomic: the local store writes a temporary file and renames it, S3 shows an
  object only once its (multipart) upload completes. A batch chunk's part is marked done only
  after its put returns, so a reader never sees half of one;
- asynchronous natively (its own Tokio runtime), with retries and timeouts of its own.

The S3 backend is tested against moto's standalone server (tests/batches/test_batches_s3.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, S3Store

from app.config.settings import Settings
from app.errors import DomainError

# What obstore raises: its own errors, and the built-in ones for some (a missing local file is
# a FileNotFoundError).
_FAILURES = (BaseError, OSError)
_MISSING = (NotFoundError, FileNotFoundError)

log = logging.getLogger("app.batches")

# A multipart upload holds at most this many parts of this size in memory at once.
_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part
_PART_CONCURRENCY = 2
STREAM_CHUNK_BYTES = 1024 * 1024


class ObjectStoreError(DomainError):
    """The store failed (unreachable, refused, misconfigured); `detail` says how, for the log
    (a client sees the generic message)."""

    def __init__(self, detail: str) -> None:
        super().__init__("The gateway's file storage is not answering; please try again shortly.")
        self.detail = detail


class ObjectMissing(ObjectStoreError):
    """No object has that key."""


class ObjectStore:
    """Objects by key, under the configured directory or bucket prefix."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Any = None  # built on first use: a gateway that never batches writes nothing
        if settings.BATCH_STORAGE == "s3":
            where = f"s3://{settings.BATCH_S3_BUCKET}/{settings.BATCH_S3_PREFIX}"
            endpoint = settings.BATCH_S3_ENDPOINT_URL
            self.description = where + (f" at {endpoint}" if endpoint else "")
        else:
            self.description = f"directory {settings.BATCH_DIR}"

    def _client(self) -> Any:
        if self._store is None:
            self._store = _build(self._settings)
        return self._store

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically, replacing what was there."""
        try:
            await obstore.put_async(self._client(), key, data, use_multipart=False)
        except _FAILURES as exc:
            raise _failure(exc, key) from None

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Write what `chunks` yields at `key`, streamed, atomically. An exception from `chunks`
        aborts the upload: nothing appears at `key`."""
        try:
            await obstore.put_async(
                self._client(),
                key,
                chunks,
                use_multipart=True,
                chunk_size=_PART_BYTES,
                max_concurrency=_PART_CONCURRENCY,
            )
        except _FAILURES as exc:
            raise _failure(exc, key) from None

    async def read(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object at `key`."""
        if end <= start:
            return b""
        try:
            found = await obstore.get_range_async(self._client(), key, start=start, end=end)
        except _FAILURES as exc:
            raise _failure(exc, key) from None
        return bytes(found)

    async def stream(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The object at `key` (bytes [start, end) of it), a chunk at a time."""
        if end is not None and end <= start:
            return
        options: dict[str, Any] = {}
        if end is not None:
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        try:
            result = await obstore.get_async(self._client(), key, options=options or None)  # type: ignore[arg-type]
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK_BYTES):
                yield chunk
        except _FAILURES as exc:
            raise _failure(exc, key) from None

    async def delete(self, *keys: str) -> None:
        """Remove the objects; one that is already gone is not an error."""
        for key in keys:
            try:
                await obstore.delete_async(self._client(), key)
            except _MISSING:
                pass
            except _FAILURES as exc:
                raise _failure(exc, key) from None


def _failure(exc: BaseException, key: str) -> ObjectStoreError:
    if isinstance(exc, _MISSING):
        return ObjectMissing(f"no object {key}")
    # obstore's messages can run to a page of Rust debug output: the first line says it.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = f"{type(exc).__name__} on {key}: {first[:300]}"
    log.warning("object store failed: %s", detail)
    return ObjectStoreError(detail)


def _build(settings: Settings) -> Any:
    if settings.BATCH_STORAGE == "local":
        return LocalStore(prefix=settings.BATCH_DIR, mkdir=True)
    config: dict[str, Any] = {}
    if settings.BATCH_S3_ENDPOINT_URL:
        config["endpoint"] = settings.BATCH_S3_ENDPOINT_URL
    if settings.BATCH_S3_REGION:
        config["region"] = settings.BATCH_S3_REGION
    if settings.AWS_ACCESS_KEY_ID is not None:
        config["access_key_id"] = settings.AWS_ACCESS_KEY_ID.get_secret_value()
    if settings.AWS_SECRET_ACCESS_KEY is not None:
        config["secret_access_key"] = settings.AWS_SECRET_ACCESS_KEY.get_secret_value()
    endpoint = settings.BATCH_S3_ENDPOINT_URL or ""
    client_options: dict[str, Any] = {"timeout": "300s"}  # a 200 MB part list streams for long
    if endpoint.startswith("http://"):
        client_options["allow_http"] = True  # a MinIO (or a test server) without TLS
    return S3Store(
        settings.BATCH_S3_BUCKET,
        prefix=settings.BATCH_S3_PREFIX.strip("/") or None,
        config=config,  # type: ignore[arg-type]
        client_options=client_options,  # type: ignore[arg-type]
    )
