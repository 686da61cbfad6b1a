"""From token embeddings to one vector per input, as sentence-transformers' Pooling computes it.

`hidden` is the graph's last hidden state (batch, tokens, width) and `mask` the attention mask
(batch, tokens) of 0/1, where a row's real tokens come first (the gateway always pads on the
right). Each mode is `Pooling.forward` of sentence-transformers v5 in numpy; several modes are
concatenated in POOLING_MODES order. The mask may have had a prompt's tokens zeroed
(`include_prompt: false`): that changes what is pooled, never what the graph attended to.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _sums(hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (batch, 1, tokens) @ (batch, tokens, width): the masked sum without a masked copy.
    summed = (mask[:, None, :] @ hidden)[:, 0, :]
    counts = np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return summed, counts


def _mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    summed, counts = _sums(hidden, mask)
    out: np.ndarray = summed / counts
    return out


def _mean_sqrt_len(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    summed, counts = _sums(hidden, mask)
    out: np.ndarray = summed / np.sqrt(counts)
    return out


def _cls(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The first position, whatever the mask says (sentence-transformers v5); right padding
    # makes it the [CLS] token.
    first: np.ndarray = hidden[:, 0, :]
    return first


def _max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.where(mask[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    return out


def _weighted_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # SGPT: weights are the absolute positions 1..tokens (right padding: a row's own 1..n).
    positions = np.arange(1, hidden.shape[1] + 1, dtype=np.float32)
    return _mean(hidden, mask * positions[None, :])


def _last_token(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The last position the mask keeps, found from the right so either padding side works;
    # a row with none falls back to the last position, multiplied by its 0 mask.
    tokens = mask.shape[1]
    reversed_mask = mask[:, ::-1]
    from_right = np.where(reversed_mask.max(axis=1) == 0, 0, reversed_mask.argmax(axis=1))
    last = tokens - 1 - from_right
    rows = np.arange(mask.shape[0])
    out: np.ndarray = hidden[rows, last, :] * mask[rows, last][:, None]
    return out


# Keyed by the names of spec.POOLING_MODES, in its order.
_MODES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cls": _cls,
    "max": _max,
    "mean": _mean,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}


def pool(hidden: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """One float32 vector per row: each mode's, concatenated in the order given."""
    hidden = hidden.astype(np.float32, copy=False)  # an fp16 graph's output too
    weights = mask.astype(np.float32)
    parts = [_MODES[mode](hidden, weights) for mode in modes]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2 to unit length, as torch's F.normalize (eps 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return out
