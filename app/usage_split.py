"""Split one token total across parts in proportion to each part's own count.

An upstream reports one `prompt_tokens` for a call. When that call carried several requests'
inputs (micro-batching), or is cached item by item, each part gets its share: proportional to
the gateway's own count for it, rounded by largest remainder so the shares sum to the total
exactly (no token lost or invented, so spend per key stays exact in sum).
"""

from __future__ import annotations

from collections.abc import Sequence


def split_proportionally(total: int, weights: Sequence[int]) -> list[int]:
    """`total` as len(weights) non-negative integers summing to `total`, each in proportion to
    its weight; equal parts when every weight is 0."""
    if not weights:
        return []
    if len(weights) == 1:
        return [total]
    basis = [max(0, w) for w in weights]
    whole = sum(basis)
    if whole == 0:
        basis, whole = [1] * len(weights), len(weights)
    shares = [total * w // whole for w in basis]
    remainders = sorted(range(len(basis)), key=lambda i: (-(total * basis[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares
