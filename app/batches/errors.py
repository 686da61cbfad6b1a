"""The Batch API's domain errors; app/api/errors.py gives each its status, type and code."""

from __future__ import annotations

from app.errors import DomainError


class FileNotFound(DomainError):
    """No such file, or not the caller's (answered alike: another key's files do not exist)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"No such File object: {file_id[:80]}")
        self.file_id = file_id


class BatchNotFound(DomainError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch found with id '{batch_id[:80]}'.")
        self.batch_id = batch_id


class InvalidUpload(DomainError):
    """A file upload the gateway cannot take (its form, its purpose, its content)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FileTooLarge(DomainError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is larger than the Batch API's limit of {limit} bytes "
            f"({limit / 1024 / 1024:g} MB)."
        )
        self.limit = limit


class InvalidBatchRequest(DomainError):
    """A batch that cannot be created: a parameter's value (`param`, OpenAI's `code`)."""

    def __init__(self, message: str, *, param: str | None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


class BatchNotCancellable(DomainError):
    def __init__(self, status: str) -> None:
        super().__init__(f"Cannot cancel a batch with status '{status}'.")
        self.status = status


class BatchStoreUnavailable(DomainError):
    def __init__(self) -> None:
        super().__init__("The gateway's batch storage is not answering; please try again shortly.")


class LineOverTokenLimit(DomainError):
    """A line alone has more tokens than its key may use in a minute: pacing cannot help."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"Rate limit reached: {limit} tokens per minute for this key, and this request alone "
            f"has {tokens}."
        )
        self.tokens = tokens
        self.limit = limit
