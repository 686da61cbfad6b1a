"""What a wire protocol is to the fakes, and the request checks every protocol shares.

A protocol (one module each: openai.py, nugen.py) says where it listens, how it reads a request
body into an :class:`EmbeddingCall`, and how it writes a success body and an error body. The
server (upstream.py) does everything else: auth, faults, recording, latency.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from tests.fakes.vectors import Item

# A response's data array as the server hands it to a protocol: (index, serialised vector).
Entries = list[tuple[int, orjson.Fragment]]


class BadRequest(Exception):
    """The request is one the provider would refuse; the protocol renders the error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


@dataclass(frozen=True)
class EmbeddingCall:
    """A parsed embeddings request."""

    model: str
    items: list[Item]
    native_dims: int
    dimensions: int | None  # requested, already checked against native_dims
    base64: bool = False


class WireProtocol(ABC):
    """One provider's wire format; register an instance in protocols.py."""

    name: ClassVar[str]
    # The first path is the canonical one (embeddings_url); all of them answer.
    paths: ClassVar[tuple[str, ...]]
    base_path: ClassVar[str]  # what a client's base_url ends with

    @abstractmethod
    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        """Read a JSON body; raise BadRequest as the provider would."""

    def parse_request(
        self,
        payload: Any,
        native_dims: Callable[[str], int],
        path: str,
        query: Mapping[str, str],
    ) -> EmbeddingCall:
        """Protocols whose URL carries part of the request (a model, a version) override this."""
        return self.parse(payload, native_dims)

    def matches(self, path: str) -> bool:
        """Is this an embeddings path? Protocols with the model in the path override it."""
        return path in self.paths

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        """Does the request carry ``api_key`` the way this provider expects it?"""
        return headers.get("Authorization") == f"Bearer {api_key}"

    def unauthorized(self) -> tuple[int, bytes]:
        """The provider's answer to a missing or wrong key."""
        return 401, self.error_body(401, "Invalid API key")

    @abstractmethod
    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        """The success body for ``call`` carrying ``entries`` as its data array."""

    @abstractmethod
    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        """The provider's error body for ``status``."""


def parse_model_and_dimensions(
    payload: Any, native_dims: Callable[[str], int]
) -> tuple[str, int, int | None]:
    """Check the fields every protocol shares: (model, its native dims, requested dimensions)."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required and must be a string", param="model")
    native = native_dims(model)
    requested = payload.get("dimensions")
    if requested is not None:
        if not is_int(requested):
            raise BadRequest("dimensions must be an integer", param="dimensions")
        if not 1 <= requested <= native:
            raise BadRequest(
                f"dimensions must be between 1 and {native} for model {model}",
                param="dimensions",
            )
    if "input" not in payload:
        raise BadRequest("input is required", param="input")
    return model, native, requested


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
