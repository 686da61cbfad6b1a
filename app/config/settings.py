"""The gateway's environment interface: every env var it reads is declared here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

RedisMode = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How to reach Redis beyond its URL (settings' `redis_options`)."""

    mode: RedisMode = "standalone"
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""
    password: str | None = None  # overrides the URL's; Sentinel: the master's and replicas'
    sentinel_password: str | None = None  # the sentinels' own (`requirepass` on them)
    ca_file: str | None = None  # verifies the server's certificate on rediss://


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


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port, such as 10.0.0.5:26379")
    return host.strip("[]"), int(port)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class Settings(BaseSettings):
    # extra="allow": the .env file's other lines (a provider's key, say) are kept, unvalidated,
    # for the registry's `${VAR}`; this module names no provider. See interpolation_env.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", case_sensitive=True, extra="allow"
    )

    GATEWAY_API_KEYS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    GATEWAY_INTERNAL_TOKEN: SecretStr | None = None
    # Turns on the admin API (/admin/v1) and managed keys, and with them authentication.
    GATEWAY_ADMIN_TOKEN: SecretStr | None = None
    # Managed keys live in Redis when REDIS_URL is set; otherwise in this SQLite file.
    KEYS_DB: str = "data/keys.db"
    KEYS_KEY_PREFIX: str = "egw:keys:"
    # How long a worker trusts what it read about a key: the bound on how long a revoke,
    # disable or rotation takes to reach every worker and replica.
    KEYS_CACHE_SECONDS: float = Field(default=0.5, gt=0, le=1)
    # The longest a request waits for the SQLite files (KEYS_DB, and usage.db beside it) when
    # another process holds them locked; past it, 503 `key_store_unavailable`.
    KEYS_DB_TIMEOUT_MS: int = Field(default=1000, ge=10, le=60_000)
    # How long a console (/ui) sign-in lasts; the operator signs in again after it.
    CONSOLE_SESSION_SECONDS: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)
    MODELS_CONFIG: str = "config/models.yaml"

    HOST: str = "0.0.0.0"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WORKERS: int = Field(default=1, ge=1)
    LOG_LEVEL: str = "info"
    # JSON lines for machines (the default); `text` reads better in a local terminal.
    LOG_FORMAT: Literal["json", "text"] = "json"
    METRICS_ENABLED: bool = True
    # --- Redis (docs/operations.md: "Redis modes") ---
    # standalone: REDIS_URL names the server. cluster: REDIS_URL names any one node. sentinel:
    # the sentinels name the master; REDIS_URL (optional) gives its scheme, user and db.
    REDIS_URL: str | None = None
    REDIS_MODE: Literal["standalone", "cluster", "sentinel"] = "standalone"
    REDIS_SENTINELS: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    REDIS_SENTINEL_MASTER: str | None = None
    REDIS_PASSWORD: SecretStr | None = None
    REDIS_SENTINEL_PASSWORD: SecretStr | None = None
    # CA bundle that verifies the server's certificate on rediss:// (default: the system's).
    REDIS_CA_FILE: str | None = None
    # Cache writes wait in process for one batched write, off the request's path; at most this
    # many vectors wait (past it, new ones are not cached) and shutdown writes what is left.
    CACHE_WRITE_QUEUE: int = Field(default=10_000, ge=0)

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
    # A usage report (/v1/usage, /admin/v1/usage, the console) that cannot be read whole within
    # this long answers 503 `usage_unavailable`, never a partial report.
    USAGE_REPORT_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=60)

    # Large enough for 2048 inputs at the 300k-token cap, small enough to stop abuse early.
    MAX_REQUEST_BODY_BYTES: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Bounds every embeddings request end to end; well under the OpenAI SDK's 600 s timeout.
    # Routes share it (app/core/routing/timeouts.py) and each call has its own short timeout,
    # so a hung route costs seconds; 60 s is for the largest request: 20 s calls, two routes,
    # a retry.
    REQUEST_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)

    # --- Limits against hostile clients (docs/operations.md: "Limits and timeouts") ---
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
    # On SIGTERM: /readyz turns 503 and new requests are still served this long, so load
    # balancers notice; then accepted requests get SHUTDOWN_GRACE_SECONDS to finish.
    SHUTDOWN_DELAY_SECONDS: float = Field(default=5.0, ge=0)
    SHUTDOWN_GRACE_SECONDS: float = Field(default=60.0, gt=0)
    # Open connections or requests in progress per process; past it, 503. 0: no cap.
    MAX_CONCURRENT_REQUESTS: int = Field(default=1000, ge=0)

    # --- Batch API (docs/batches.md) ---
    # Uploaded files and result parts: a local directory, or an S3-compatible bucket (needed
    # by several replicas unless they share a ReadWriteMany volume).
    BATCH_STORAGE: Literal["local", "s3"] = "local"
    BATCH_DIR: str = "data/batches"
    # The batch queue and records without Redis (with REDIS_URL they are in Redis).
    BATCH_DB: str = "data/batches.db"
    BATCH_KEY_PREFIX: str = "egw:batch:"  # their keys in Redis
    BATCH_S3_BUCKET: str | None = None
    BATCH_S3_PREFIX: str = ""  # a key prefix inside the bucket
    BATCH_S3_ENDPOINT_URL: str | None = None  # MinIO, GCS and other S3-compatible stores
    BATCH_S3_REGION: str | None = None
    # The standard AWS credentials; unset: the S3 client's own chain (instance role, ...).
    AWS_ACCESS_KEY_ID: SecretStr | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None
    # OpenAI's limits per input file; an upload past the bytes gets 413 before it is stored.
    BATCH_MAX_FILE_BYTES: int = Field(default=200 * 1024 * 1024, ge=1024)
    BATCH_MAX_LINES: int = Field(default=50_000, ge=1)
    # Batch files (inputs without `expires_after`, outputs without `output_expires_after`).
    BATCH_FILE_RETENTION_SECONDS: int = Field(default=30 * 86_400, ge=3600)
    # `completion_window` may be `24h` or any duration up to this (`30m`, `2h`, `7d`).
    BATCH_MAX_COMPLETION_WINDOW_SECONDS: int = Field(default=30 * 86_400, ge=60)
    # Chunks one process works on at once; 0: this process runs no batch work (the API still
    # serves). Each chunk holds at most BATCH_CHUNK_LINES lines, BATCH_CHUNK_INPUTS inputs and
    # BATCH_CHUNK_BYTES bytes of input (and always at least one line).
    BATCH_CONCURRENCY: int = Field(default=4, ge=0)
    BATCH_CHUNK_LINES: int = Field(default=500, ge=1)
    BATCH_CHUNK_INPUTS: int = Field(default=2048, ge=1)
    BATCH_CHUNK_BYTES: int = Field(default=8 * 1024 * 1024, ge=1024)
    # A chunk whose worker has not renewed its claim for this long is taken over by another
    # (a worker renews every third of it while it works).
    BATCH_LEASE_SECONDS: float = Field(default=60.0, ge=0.5)
    # How often an idle worker looks for work, and a working one for a cancel or expiry.
    BATCH_POLL_SECONDS: float = Field(default=0.5, gt=0, le=60)
    # On shutdown, chunks in progress get this long to finish; then they are handed back.
    BATCH_DRAIN_SECONDS: float = Field(default=10.0, ge=0)
    # An upload's body may take longer than BODY_TIMEOUT_SECONDS while it keeps this rate.
    BATCH_UPLOAD_MIN_BYTES_PER_SECOND: int = Field(default=100_000, ge=1)
    # Bounds every call to the batch store (Redis or SQLite).
    BATCH_STORE_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)

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

    @field_validator("REDIS_SENTINELS", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return tuple(_host_port(part) if isinstance(part, str) else part for part in parts)
        return parts

    @model_validator(mode="after")
    def _redis_mode(self) -> Settings:
        if self.REDIS_MODE == "sentinel":
            if not self.REDIS_SENTINELS or not self.REDIS_SENTINEL_MASTER:
                raise ValueError(
                    "REDIS_MODE=sentinel needs REDIS_SENTINELS (host:port,...) and "
                    "REDIS_SENTINEL_MASTER (the master's name)"
                )
            if self.REDIS_URL is None:  # the URL only carries scheme, user and db here
                self.REDIS_URL = f"redis://{self.REDIS_SENTINEL_MASTER}/0"
        elif self.REDIS_MODE == "cluster" and self.REDIS_URL is None:
            raise ValueError("REDIS_MODE=cluster needs REDIS_URL naming any one node")
        if self.BATCH_STORAGE == "s3" and not self.BATCH_S3_BUCKET:
            raise ValueError("BATCH_STORAGE=s3 needs BATCH_S3_BUCKET")
        return self

    @property
    def redis_options(self) -> RedisOptions:
        return RedisOptions(
            mode=self.REDIS_MODE,
            sentinels=self.REDIS_SENTINELS,
            sentinel_master=self.REDIS_SENTINEL_MASTER or "",
            password=_secret(self.REDIS_PASSWORD),
            sentinel_password=_secret(self.REDIS_SENTINEL_PASSWORD),
            ca_file=self.REDIS_CA_FILE,
        )

    @field_validator(
        "GATEWAY_INTERNAL_TOKEN",
        "GATEWAY_ADMIN_TOKEN",
        "REDIS_URL",
        "REDIS_SENTINEL_MASTER",
        "REDIS_PASSWORD",
        "REDIS_SENTINEL_PASSWORD",
        "REDIS_CA_FILE",
        "BATCH_S3_BUCKET",
        "BATCH_S3_ENDPOINT_URL",
        "BATCH_S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        mode="before",
    )
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
        return bool(self.GATEWAY_API_KEYS) or self.GATEWAY_ADMIN_TOKEN is not None

    def interpolation_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The variables `${VAR}` in the registry sees: the process env, then the .env file's."""
        merged = {k: str(v) for k, v in (self.model_extra or {}).items() if v is not None}
        merged.update(environ)
        return merged

    @property
    def extra_names(self) -> list[str]:
        """The .env file's names that are not settings: values to keep out of any summary."""
        return sorted(self.model_extra or {})
