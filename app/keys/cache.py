"""Each worker remembers what the store said about a secret hash for at most `ttl` seconds.

This is what bounds how long a change takes to reach every worker and replica: a revoke,
disable or rotation is seen by the next lookup after the entry expires. Expiry and rotation
grace are decided on every request with the current time, so they are exact whatever the
cache holds. Unknown hashes are remembered too (bounded), so a flood of wrong keys does not
become a flood of store reads; a new key's hash cannot be among them, as nobody knew it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from app.keys.model import ApiKeyRecord

MAX_ENTRIES = 10_000


class LookupCache:
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()

    def get(self, digest: str) -> tuple[bool, ApiKeyRecord | None]:
        """(found, record): found is False when the store must be asked."""
        entry = self._entries.get(digest)
        if entry is None or self._clock() - entry[0] >= self.ttl:
            return False, None
        return True, entry[1]

    def put(self, digest: str, record: ApiKeyRecord | None) -> None:
        self._entries[digest] = (self._clock(), record)
        self._entries.move_to_end(digest)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, digests: list[str]) -> None:
        """This process just changed these keys: its own next lookup reads the store."""
        for digest in digests:
            self._entries.pop(digest, None)
