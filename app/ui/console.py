"""The console's long-lived parts: the gateway it shows, its sessions, its traffic statistics."""

from __future__ import annotations

from redis.asyncio import Redis

from app.api.admin import admin_id
from app.config.settings import Settings
from app.runtime.services import Services
from app.ui.session import Sessions, token_matches
from app.ui.stats import RollingStats


class Console:
    def __init__(self, settings: Settings, stats: RollingStats) -> None:
        token = settings.GATEWAY_ADMIN_TOKEN
        assert token is not None  # the console exists only with an admin token
        self._services: Services | None = None  # attached by the lifespan, once built
        self._token = token
        self.settings = settings
        self.stats = stats
        # How audit lines name changes made here: the admin token's hash id, from the console.
        self.actor = "console:" + admin_id(token.get_secret_value())
        self._sessions: Sessions | None = None

    def attach(self, services: Services) -> None:
        self._services = services

    @property
    def services(self) -> Services:
        assert self._services is not None  # pages are served only after start-up
        return self._services

    @property
    def redis(self) -> Redis | None:
        """The gateway's Redis client, once started (the traffic statistics share it)."""
        return self._services.redis if self._services is not None else None

    def sessions(self) -> Sessions:
        # Built on first use: the gateway (and its Redis client) exists only once started.
        if self._sessions is None:
            self._sessions = Sessions(
                self._token.get_secret_value(),
                self.settings.CONSOLE_SESSION_SECONDS,
                redis=self.services.redis,
                prefix=self.settings.RATE_LIMIT_KEY_PREFIX + "console-ended:",
            )
        return self._sessions

    def token_is(self, presented: str) -> bool:
        return token_matches(self._token.get_secret_value(), presented)
