"""/files: OpenAI's Files API for the Batch API's input and output files (docs/batches.md).

HTTP only: authenticate, read the request, call app/batches/files.py, answer. An upload streams
from the socket to the object store; its body has its own cap (BATCH_MAX_FILE_BYTES, enforced by
app/api/middleware.py before the handler runs when Content-Length says so, and while the body
arrives otherwise) and a minimum rate instead of the usual body timeout (app/server/protocol.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.api.admission import authenticate
from app.api.context import lifespan_state
from app.api.multipart import StreamedForm
from app.api.responses import json_response
from app.batches.errors import InvalidUpload
from app.batches.files import MAX_LIST, Files, parse_expires_after
from app.batches.service import owner_of

router = APIRouter()

PATH = "/files"
# Room for the multipart framing and fields around a file of BATCH_MAX_FILE_BYTES.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


async def _files_and_owner(request: Request) -> tuple[Files, str]:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=True)
    return services.batches.files, owner_of(caller.key_id)


@router.post(PATH)
async def create_file(request: Request) -> Response:
    files, owner = await _files_and_owner(request)
    form = StreamedForm(request.headers.get("content-type"), request.stream(), "file")
    staged = await files.stage(form.file_bytes())
    try:
        if not form.has_file:
            raise InvalidUpload("Missing required parameter: 'file'.", param="file")
        fields = form.fields
        expires = parse_expires_after(
            fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
        )
        record = await files.commit(
            owner, staged, form.filename or "upload", fields.get("purpose"), expires
        )
    except BaseException:
        await files.discard(staged)
        raise
    return json_response(record.public())


@router.get(PATH)
async def list_files(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=MAX_LIST, ge=1, le=MAX_LIST),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Response:
    files, owner = await _files_and_owner(request)
    records, has_more = await files.list(owner, purpose, after, limit, order)
    return json_response(page([r.public() for r in records], has_more))


@router.get(PATH + "/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> Response:
    files, owner = await _files_and_owner(request)
    return json_response((await files.get(owner, file_id)).public())


@router.delete(PATH + "/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    files, owner = await _files_and_owner(request)
    await files.delete(owner, file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


@router.get(PATH + "/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    files, owner = await _files_and_owner(request)
    record, stream = await files.content(owner, file_id)
    return content_response(record.bytes, stream)


def content_response(size: int, stream: AsyncIterator[bytes]) -> StreamingResponse:
    """The exact stored bytes, streamed (the SDKs read any content type)."""
    return StreamingResponse(
        stream,
        media_type="application/octet-stream",
        headers={"content-length": str(size)},
    )


def page(data: list[dict[str, object]], has_more: bool) -> dict[str, object]:
    """OpenAI's cursor page: the SDKs' auto-pagination asks again `after` the last id while
    `has_more` is true (and older SDKs until a page is empty)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
