"""Local Matryoshka reduction: for a route that cannot take `dimensions`, the gateway asks for
the full vector and keeps its first `dimensions` values, L2-renormalised — what a Matryoshka-
trained model's own shortening does (OpenAI text-embedding-3, nomic-embed, gemini-embedding)."""

from __future__ import annotations

import numpy as np

from app.config.registry import Route
from app.core.job import EmbeddingJob


def shortens_locally(route: Route, job: EmbeddingJob) -> bool:
    return route.dimensions_mode == "truncate" and job.dimensions is not None


def shorten(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` columns, each row rescaled to unit length (zero rows stay zero)."""
    head = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    np.divide(head, norms, out=head, where=norms > 0)
    return head
