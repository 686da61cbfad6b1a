"""The pooled HTTP client every HTTP provider shares the shape of, and its error mapping."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from app.providers.base import Failure, UpstreamError

_TIMEOUT_CAUSES = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)


class UpstreamHTTP:
    """One pooled httpx client per provider, over aiohttp's transport for its lower CPU cost."""

    def __init__(self, provider: str, display_name: str, max_connections: int) -> None:
        self.provider = provider
        self.display_name = display_name
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False), trust_env=False
        )

    async def post_json(
        self, url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> httpx.Response:
        """POST and read the whole body; any transport failure becomes an UpstreamError."""
        try:
            # httpx's timeouts bound each phase; asyncio's bounds the call as a whole.
            async with asyncio.timeout(timeout):
                return await self._client.post(
                    url,
                    content=orjson.dumps(payload),
                    headers={"content-type": "application/json", **headers},
                    timeout=timeout,
                )
        except TimeoutError:
            raise self._timeout(timeout) from None
        except httpx.HTTPError as exc:
            if _caused_by_timeout(exc):
                raise self._timeout(timeout) from None
            raise UpstreamError(
                self.provider,
                Failure.CONNECT,
                f"{self.display_name}: connection failed ({type(exc).__name__})",
            ) from None

    def _timeout(self, timeout: float) -> UpstreamError:
        return UpstreamError(
            self.provider, Failure.TIMEOUT, f"{self.display_name}: no answer within {timeout:g}s"
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _caused_by_timeout(exc: BaseException) -> bool:
    # The aiohttp transport maps every connection error to httpx.ConnectTimeout, so the
    # original cause, not the httpx class, tells a timeout from a refused or dropped connection.
    cause = exc.__cause__
    if cause is None:
        return isinstance(exc, httpx.TimeoutException)
    return isinstance(cause, _TIMEOUT_CAUSES)


def classify_status(status: int) -> Failure:
    if status in (400, 413, 422):
        return Failure.BAD_REQUEST
    if status in (401, 403):
        return Failure.AUTH
    if status == 429:
        return Failure.RATE_LIMITED
    if status == 408 or status >= 500:
        return Failure.TIMEOUT if status in (408, 504) else Failure.SERVER
    return Failure.OTHER


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """`retry-after-ms` (OpenAI's) wins over `Retry-After` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def malformed(provider: str, display_name: str, problem: str) -> UpstreamError:
    return UpstreamError(
        provider, Failure.MALFORMED, f"{display_name} sent a malformed response: {problem}"
    )


def parse_json(provider: str, display_name: str, response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise malformed(provider, display_name, "body is not JSON") from None


def short(text: str, secret: str | None, limit: int = 300) -> str:
    """An upstream message fit for a client: one line, bounded, with our key scrubbed out."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_from_response(
    provider: str, display_name: str, response: httpx.Response, message: str | None, key_env: str
) -> UpstreamError:
    """Map a non-200 upstream answer to an UpstreamError whose detail a client may read."""
    status = response.status_code
    failure = classify_status(status)
    if failure is Failure.AUTH:
        detail = f"{display_name} rejected the gateway's API key (HTTP {status}); check {key_env}"
    elif failure is Failure.BAD_REQUEST:
        detail = message or f"HTTP {status}"
    else:
        detail = f"{display_name} answered HTTP {status}" + (f": {message}" if message else "")
    return UpstreamError(
        provider, failure, detail, status=status, retry_after=retry_after_seconds(response.headers)
    )
