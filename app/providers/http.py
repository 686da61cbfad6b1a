"""The pooled HTTP client every HTTP provider shares the shape of, and its error mapping."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any, ClassVar

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from app.providers.base import Failure, UpstreamCall, UpstreamError, UpstreamResult
from app.providers.validation import MalformedResponse, parse_embeddings
from app.registry import ProviderConfig

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


class HTTPProvider:
    """The request/response cycle every HTTP upstream shares; subclasses say only what differs:
    the path, the fields sent, where the error message is, and what usage looks like."""

    display_name: ClassVar[str] = "upstream"
    default_key_env: ClassVar[str] = "the provider's API key"
    path: ClassVar[str] = "/embeddings"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self._url = (config.base_url or "").rstrip("/") + self.path
        self._key = config.api_key.get_secret_value() if config.api_key else None
        self._key_env = config.api_key_env or self.default_key_env
        self._http = UpstreamHTTP(name, self.display_name, config.max_concurrency)

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        raise NotImplementedError

    def error_message(self, body: Any) -> str | None:
        """The upstream's own words from an error body, if it has any."""
        return None

    def prompt_tokens(self, usage: Any) -> int | None:
        return usage_count(usage, "prompt_tokens", "total_tokens")

    async def embed(self, call: UpstreamCall) -> UpstreamResult:
        headers = {"x-request-id": call.request_id}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        response = await self._http.post_json(self._url, self.payload(call), headers, call.timeout)
        if response.status_code != 200:
            message = self.error_message(_json_or_none(response))
            raise error_from_response(
                self.name,
                self.display_name,
                response,
                short(message, self._key) if message else None,
                self._key_env,
            )
        try:
            vectors, usage = parse_embeddings(
                response.content, len(call.inputs), call.expected_dims
            )
        except MalformedResponse as exc:
            raise malformed(self.name, self.display_name, str(exc)) from None
        return UpstreamResult(vectors, self.prompt_tokens(usage))

    async def aclose(self) -> None:
        await self._http.aclose()


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def usage_count(usage: Any, *fields: str) -> int | None:
    if not isinstance(usage, dict):
        return None
    for field in fields:
        value = usage.get(field)
        if type(value) is int and value >= 0:
            return value
    return None
