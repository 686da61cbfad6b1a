"""The embeddings request contract, for the HTTP layer: the checks themselves live in
app/core/embedding_request.py, shared with the Batch API's lines; their domain errors become
400s (and a 503 for a model without provider keys) in app/api/errors.py's table."""

from __future__ import annotations

from app.core.embedding_request import parse_embedding_request
from app.core.errors import UnknownModel

__all__ = ["UnknownModel", "parse_embedding_request"]
