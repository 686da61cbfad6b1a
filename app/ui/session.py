"""Console sessions: a signed, timestamped cookie that any worker or replica can check alone.

The cookie holds a random session id and the session's CSRF token, signed with HMAC (itsdangerous)
under a key derived from GATEWAY_ADMIN_TOKEN: no server-side session table, so several workers
and replicas need nothing shared to accept it, and changing the admin token ends every session
at once. It never holds the admin token itself. Sign-out marks the id as ended until the cookie
would have expired anyway: in Redis when REDIS_URL is set (every worker and replica sees it),
else in this process only.

Whether a session was signed out is asked of Redis with a bound (CHECK_TIMEOUT_SECONDS). When
Redis does not answer in time, or fails, the check fails closed: `SessionUnchecked`, which the
pages answer with a 503, never with the page. A signed-out session must not come back to life
because Redis is slow, and a hung Redis must not hang the console. The gateway's API is not
affected: it never reads console sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.state.redis_client import REDIS_FAILURES, RedisClient

log = logging.getLogger("app.ui")

COOKIE = "egw_console"
# A console page is not the hot path, so Redis gets longer than on the API (REDIS_TIMEOUT_MS) to
# say whether a session was signed out; past it the page says it cannot tell.
CHECK_TIMEOUT_SECONDS = 1.0
_KEY_LABEL = b"embeddings-gateway console session v1"
_MAX_ENDED = 10_000  # ended sessions remembered in process; the oldest is forgotten first


class SessionUnchecked(Exception):
    """Redis did not say, within CHECK_TIMEOUT_SECONDS, whether this session was signed out."""


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    csrf: str


class Sessions:
    def __init__(
        self,
        admin_token: str,
        lifetime_seconds: int,
        *,
        redis: RedisClient | None = None,
        prefix: str = "egw:console:ended:",
    ) -> None:
        # A derived key, so the signing key is not the token an operator pastes anywhere else.
        key = hmac.new(admin_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(key, salt="console-session")
        self.lifetime = lifetime_seconds
        self._redis = redis
        self._prefix = prefix
        self._ended: dict[str, float] = {}  # sid -> when it would have expired (monotonic)

    def issue(self) -> tuple[str, Session]:
        session = Session(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32))
        return self._serializer.dumps({"s": session.sid, "c": session.csrf}), session

    async def read(self, cookie: str | None) -> Session | None:
        """The cookie's session; None if it is not one, expired or signed out.
        SessionUnchecked if it is well signed but Redis cannot say whether it was signed out."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.lifetime)
        except BadSignature:  # SignatureExpired is one too
            return None
        if not isinstance(data, dict) or not {"s", "c"} <= data.keys():
            return None
        session = Session(sid=str(data["s"]), csrf=str(data["c"]))
        if await self._is_ended(session.sid):
            return None
        return session

    async def end(self, session: Session) -> None:
        self._remember_ended(session.sid)
        if self._redis is not None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    await self._redis.set(self._prefix + session.sid, b"1", ex=self.lifetime)
            except REDIS_FAILURES as exc:
                log.warning("console sign-out not shared through Redis (%s)", type(exc).__name__)

    def _remember_ended(self, sid: str) -> None:
        now = time.monotonic()
        self._ended[sid] = now + self.lifetime
        for old in [old for old, until in self._ended.items() if until <= now]:
            del self._ended[old]
        while len(self._ended) > _MAX_ENDED:
            del self._ended[next(iter(self._ended))]

    async def _is_ended(self, sid: str) -> bool:
        until = self._ended.get(sid)
        if until is not None and until > time.monotonic():
            return True
        if self._redis is None:
            return False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                ended = bool(await self._redis.exists(self._prefix + sid))
        except REDIS_FAILURES as exc:
            log.warning(
                "console session not checked: Redis did not answer (%s)", type(exc).__name__
            )
            raise SessionUnchecked from None
        if ended:  # for good: the next check of this copy needs no Redis
            self._remember_ended(sid)
        return ended


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)


def token_matches(expected: str, presented: str) -> bool:
    """Constant-time in the length of neither: both sides are hashed first."""
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )
