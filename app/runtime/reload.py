"""Registry reload: re-read the registry file and the `${VAR}` values, swap, retire the old one.

Triggered by SIGHUP (app/server/worker.py) or `POST /admin/v1/reload`. Only the registry and what it
interpolates change; settings (ports, limits, Redis) need a restart. The new registry is built and
checked completely before anything is swapped, so an invalid one changes nothing: the caller gets
the same one-line `RegistryError` `embeddings-gateway check-config` prints, with every value
`${VAR}` put in masked.

Reading and parsing run in a worker thread: a registry near its size cap takes seconds to parse
on a busy machine, and requests must not wait for it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import dataclass

from dotenv import dotenv_values

from app.config.registry import Registry, RegistryError
from app.config.settings import Settings
from app.core.serving import Serving
from app.runtime.build import providers_for, read_registry
from app.runtime.services import Services

log = logging.getLogger("app.reload")

# How long after the request timeout an old snapshot may still be in use: settling and writing
# the response take a little longer than the upstream calls.
_RETIRE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Reloaded:
    models: int  # models offered after the reload
    routes_kept: int  # routes whose health carried over
    routes_new: int


def interpolation_env(settings: Settings) -> dict[str, str]:
    """What `${VAR}` sees now: the process env over the .env file as it is on disk today
    (the process env cannot change from outside; the file can)."""
    env_file = Settings.model_config.get("env_file")
    from_file: dict[str, str | None] = {}
    if isinstance(env_file, str) and os.path.isfile(env_file):
        from_file = dotenv_values(env_file)
    names = {k: v for k, v in from_file.items() if v is not None and k not in Settings.model_fields}
    return settings.interpolation_env({**names, **os.environ})


def _read(settings: Settings) -> Registry:
    """The file and the .env it interpolates, read and validated (in a worker thread).

    The collector is off meanwhile: a registry near its cap is millions of short-lived objects,
    and the collector's full passes over them (0.3-0.8 s each, measured on a busy 2-core
    machine) hold the GIL, stalling the event loop as parsing on it did. They are freed by
    reference counting as soon as the registry is built; nothing else waits long for them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return read_registry(settings.MODELS_CONFIG, interpolation_env(settings))
    finally:
        if enabled:
            gc.enable()


class Reloader:
    """One reload at a time per process; a second trigger while one runs waits its turn."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], Serving] = {}

    async def reload(self) -> Reloaded:
        async with self._lock:
            services = self._services
            settings = services.settings
            old = services.serving
            try:
                registry = await asyncio.to_thread(_read, settings)
                providers = providers_for(registry)
            except RegistryError as exc:
                log.error("reload refused, still serving the previous registry: %s", exc)
                raise
            router = old.router.successor(registry, providers)
            services.swap(Serving(registry, providers, router, old.cache))
            longest = settings.REQUEST_TIMEOUT_SECONDS + _RETIRE_MARGIN_SECONDS
            task = asyncio.create_task(old.retire(longest))
            self._retiring[task] = old
            task.add_done_callback(self._retiring.pop)
            kept = router.routes_carried_over
            total = sum(len(model.routes) for model in registry.models.values())
            result = Reloaded(len(registry.available()), kept, total - kept)
            log.info(
                "registry reloaded from %s: %d models offered; %d routes kept their health, "
                "%d are new or changed",
                registry.source,
                result.models,
                result.routes_kept,
                result.routes_new,
            )
            return result

    async def aclose(self) -> None:
        """At shutdown: old snapshots close now, whatever still runs on them."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for serving in retiring.values():
            await serving.aclose()
