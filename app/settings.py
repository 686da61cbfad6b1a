"""The gateway's environment interface: every env var it reads is declared here."""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Provider env vars the registry may interpolate; they live in Settings so a `.env` file
# fills them exactly as it fills everything else.
PROVIDER_ENV_FIELDS = (
    "NANOGPT_API_KEY",
    "NANOGPT_BASE_URL",
    "AIML_API_KEY",
    "AIML_BASE_URL",
    "NUGEN_API_KEY",
    "NUGEN_BASE_URL",
)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _parse_network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        hint = f"; did you mean {ip_network(text, strict=False)}?"
    except ValueError:
        hint = ""
    raise ValueError(f"{text!r} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32{hint}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", case_sensitive=True, extra="ignore"
    )

    GATEWAY_API_KEYS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    GATEWAY_INTERNAL_TOKEN: SecretStr | None = None
    MODELS_CONFIG: str = "config/models.yaml"

    NANOGPT_API_KEY: SecretStr | None = None
    NANOGPT_BASE_URL: str = "https://nano-gpt.com/api/v1"
    AIML_API_KEY: SecretStr | None = None
    AIML_BASE_URL: str = "https://api.aimlapi.com/v1"
    NUGEN_API_KEY: SecretStr | None = None
    NUGEN_BASE_URL: str = "https://api.nugen.in/api/v3"

    HOST: str = "0.0.0.0"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WORKERS: int = Field(default=1, ge=1)
    LOG_LEVEL: str = "info"
    # JSON lines for machines (the default); `text` reads better in a local terminal.
    LOG_FORMAT: Literal["json", "text"] = "json"
    METRICS_ENABLED: bool = True
    REDIS_URL: str | None = None

    # Requests per second per client IP on the API routes; 0 turns the limit off.
    RATE_LIMIT_PER_SECOND: int = Field(default=100, ge=0)
    # Proxies whose X-Forwarded-For / Forwarded we believe; parsed once, here.
    TRUSTED_PROXIES: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    # Lets several gateways (or environments) share one Redis without sharing buckets.
    RATE_LIMIT_KEY_PREFIX: str = "egw:rl:"
    # Bounds every Redis call, so a hung Redis costs a request this much at most.
    REDIS_TIMEOUT_MS: int = Field(default=50, ge=1, le=10_000)

    # Per-input embedding cache in Redis; it applies only when REDIS_URL is set.
    CACHE_ENABLED: bool = True
    CACHE_TTL_SECONDS: int = Field(default=7 * 86_400, ge=1)
    # Bump it (e.g. to egw:emb:v2:) to drop every cached vector at once.
    CACHE_KEY_PREFIX: str = "egw:emb:v1:"
    # Cache reads move up to 2048 vectors at once: allowed longer than a rate-limit check.
    CACHE_TIMEOUT_MS: int = Field(default=250, ge=1, le=10_000)
    USAGE_KEY_PREFIX: str = "egw:usage:"

    # Large enough for 2048 inputs at the 300k-token cap, small enough to stop abuse early.
    MAX_REQUEST_BODY_BYTES: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Bounds every embeddings request end to end; well under the OpenAI SDK's 600 s timeout.
    REQUEST_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)

    # --- Limits against hostile clients (README: "Limits and timeouts") ---
    # Failed authentications per client IP per minute (a sliding minute); 0 turns it off.
    AUTH_FAILURES_PER_MINUTE: int = Field(default=30, ge=0)
    # A request's whole head (request line and headers); past it, 431.
    MAX_HEADER_BYTES: int = Field(default=64 * 1024, ge=1024)
    # From a connection (or a request's first byte) to the end of its headers; past it, 408.
    HEADER_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    # From the end of the headers to the end of the body; past it, 408.
    BODY_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    # Idle keep-alive connections are closed after this long.
    KEEPALIVE_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    # Open connections or requests in progress per process; past it, 503. 0: no cap.
    MAX_CONCURRENT_REQUESTS: int = Field(default=1000, ge=0)

    @field_validator("GATEWAY_API_KEYS", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return tuple(_parse_network(part) if isinstance(part, str) else part for part in parts)
        return parts

    @field_validator("GATEWAY_INTERNAL_TOKEN", "REDIS_URL", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        # A configuration error the CLI reports in one line, not a traceback from redis-py.
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("LOG_LEVEL")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("must be one of critical, error, warning, info, debug")
        return level

    @cached_property
    def auth_enabled(self) -> bool:
        return bool(self.GATEWAY_API_KEYS)

    def interpolation_env(self, environ: dict[str, str]) -> dict[str, str]:
        """The variables `${VAR}` in the registry sees: the process env, then Settings' values."""
        merged = dict(environ)
        for name in PROVIDER_ENV_FIELDS:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None and name not in environ:
                merged[name] = str(value)
        return merged
