"""What the Batch API keeps: file records, batch records, the plan of a batch's chunks and what
each chunk came to, and how files and batches look on the wire (OpenAI's `FileObject` and
`Batch`, docs/batches.md).

Records are plain dataclasses serialised as JSON by the stores (app/batches/sqlite_store.py,
redis_store.py). A batch's counters (lines done, tokens, spend) are kept beside its record, not
in it: they grow with every chunk, atomically with the chunk's completion, while the record
changes only with the batch's status.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import orjson

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
ACTIVE: frozenset[str] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
FilePurpose = Literal["batch", "batch_output"]
ENDPOINT = "/v1/embeddings"

_BASE62 = string.digits + string.ascii_letters
_Bytes = bytes  # FileRecord has a field named `bytes` (OpenAI's), which hides the type there


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    out = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        out.append(_BASE62[digit])
    return "".join(out)


def new_file_id() -> str:
    return "file-" + _base62(secrets.token_bytes(17), 22)  # as OpenAI's: 22 base62


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)  # as OpenAI's: 32 hex


def derived_file_id(batch_id: str, kind: str) -> str:
    """A batch's output or error file id: the same whoever finalizes it, however often."""
    return "file-" + _base62(hashlib.sha256(f"{batch_id}:{kind}".encode()).digest(), 22)


def line_ids(batch_id: str, line: int) -> tuple[str, str]:
    """A line's `id` (`batch_req_` and 24 hex) and the request id it is embedded under (32 hex,
    in logs and `response.request_id`): the same on every attempt at the line. The SDKs never
    parse either; hex rather than OpenAI's base62, as it costs a line nothing to make."""
    digest = hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()
    return "batch_req_" + digest[:24], digest[32:]


@dataclass(frozen=True, slots=True)
class Part:
    """Bytes [start, start + length) of the object at `key`: one piece of an output file."""

    key: str
    start: int
    length: int


@dataclass(slots=True)
class FileRecord:
    id: str
    owner: str
    purpose: FilePurpose
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None
    # An upload is one object; an output or error file is its batch's parts, in chunk order.
    object_key: str | None = None
    parts: list[Part] = field(default_factory=list)
    batch_id: str | None = None

    def public(self) -> dict[str, Any]:
        """OpenAI's FileObject. `status: processed`, or the SDKs' wait helpers never return."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def dumps(self) -> _Bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: _Bytes | str) -> FileRecord:
        data = orjson.loads(raw)
        data["parts"] = [Part(**part) for part in data.get("parts") or []]
        return cls(**{k: v for k, v in data.items() if k in _FILE_FIELDS})


@dataclass(slots=True)
class BatchError:
    code: str
    message: str
    param: str | None = None
    line: int | None = None


@dataclass(slots=True)
class BatchRecord:
    """A batch as its status changes: replaced whole, guarded by `version` (see store.py)."""

    id: str
    owner: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: BatchStatus = "validating"
    endpoint: str = ENDPOINT
    metadata: dict[str, str] | None = None
    model: str | None = None
    output_expires_after: int | None = None  # seconds after the output file's creation
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] | None = None
    total: int = 0  # lines
    total_inputs: int = 0
    chunks: int = 0  # 0 until validation has planned them
    # The batch's span (trace ID, span ID in hex) for its work's traces to link to; None when
    # it was created untraced (app/batches/traces.py).
    trace: list[str] | None = None
    # The rules its lines' bodies were checked under at validation (`body_rules`): while its
    # model's are the same, running a line does not check its body again.
    body_rules: str | None = None
    version: int = 0

    def dumps(self) -> bytes:
        data = asdict(self)
        data.pop("version")
        return orjson.dumps(data)

    @classmethod
    def loads(cls, raw: bytes | str, version: int) -> BatchRecord:
        data = orjson.loads(raw)
        if data.get("errors") is not None:
            data["errors"] = [BatchError(**e) for e in data["errors"]]
        data = {k: v for k, v in data.items() if k in _BATCH_FIELDS}
        return cls(**data, version=version)


@dataclass(slots=True)
class Counters:
    """What a batch's chunks came to so far (added as each chunk completes)."""

    completed: int = 0  # lines answered with 200 (in the output file)
    failed: int = 0  # lines in the error file that count as failed (cancelled ones do not)
    cancelled: int = 0
    expired: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    upstream_tokens: int = 0
    spend_usd: float = 0.0
    chunks_done: int = 0  # 1 in a chunk's own outcome

    def add(self, other: Counters) -> None:
        for f in _COUNTER_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))


_COUNTER_FIELDS = tuple(f.name for f in fields(Counters))
COUNTER_FIELDS = _COUNTER_FIELDS
_FILE_FIELDS = frozenset(f.name for f in fields(FileRecord))
_BATCH_FIELDS = frozenset(f.name for f in fields(BatchRecord))


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """Lines [first_line, first_line + lines) of the input file: bytes [start, end)."""

    index: int
    start: int
    end: int
    first_line: int  # 1-based, as `errors.data[].line`
    lines: int
    inputs: int

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> ChunkPlan:
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class ChunkOutcome:
    """A done chunk: its parts (one object of output lines, one of error lines; each only when
    it has lines) and what it counted."""

    index: int
    out_key: str | None
    out_bytes: int
    err_key: str | None
    err_bytes: int
    counters: Counters

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> ChunkOutcome:
        data = orjson.loads(raw)
        data["counters"] = Counters(**data["counters"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Claim:
    """A chunk a worker holds until it completes or releases it (or its lease runs out)."""

    batch_id: str
    index: int
    token: str  # the store's handle on the claim (a stream entry id, or the worker's id)


def batch_public(record: BatchRecord, counters: Counters) -> dict[str, Any]:
    """OpenAI's Batch object; every nullable field sent, as null when unset."""
    usage = None
    if record.status not in ("validating", "failed") or counters.completed:
        usage = {
            "input_tokens": counters.input_tokens,
            "input_tokens_details": {"cached_tokens": counters.cached_tokens},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counters.input_tokens,
        }
    errors = None
    if record.errors:
        errors = {"object": "list", "data": [asdict(e) for e in record.errors]}
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "model": record.model,
        "errors": errors,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": {
            "total": record.total,
            "completed": counters.completed,
            "failed": counters.failed,
        },
        "usage": usage,
        "metadata": record.metadata,
    }
