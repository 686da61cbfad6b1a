"""`embeddings-gateway [serve | check-config | keys ...]`: start uvicorn, validate the
configuration, or manage API keys (`embeddings-gateway keys --help`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE

from app.config.errors import one_line
from app.config.registry import RegistryError
from app.config.registry_file import masked
from app.config.report import model_table, settings_summary
from app.config.settings import Settings
from app.keys.store import KeyStoreError
from app.logs import uvicorn_log_config
from app.runtime.build import build_services
from app.runtime.services import Services
from app.server.supervisor import GatewaySupervisor
from app.server.worker import GatewayServer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        from app.keys.cli import main as keys_main

        return keys_main(argv[1:])
    parser = argparse.ArgumentParser(prog="embeddings-gateway", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "check-config"])
    command = parser.parse_args(argv).command
    try:
        settings = Settings()
        services = build_services(settings)  # fail fast, with one clear line, before serving
    except (RegistryError, ValidationError) as exc:
        print(f"embeddings-gateway: configuration error: {_one_line(exc)}", file=sys.stderr)
        return 2
    failure = asyncio.run(_open_key_store(services))
    if failure is not None:
        print(f"embeddings-gateway: configuration error: {failure}", file=sys.stderr)
        return 2
    if command == "check-config":
        print(json.dumps(settings_summary(settings), indent=2))
        print("\n".join(model_table(services.registry)))
        return 0
    serve(settings)
    return 0


async def _open_key_store(services: Services) -> str | None:
    """An SQLite key store that cannot be opened (say, an unwritable KEYS_DB) stops start-up
    with one line. Redis is not checked here: an outage at start-up is not a config error."""
    try:
        if services.keys is not None and services.redis is None:
            await services.keys.store.start()
        return None
    except KeyStoreError as exc:
        return f"KEYS_DB={services.settings.KEYS_DB}: {exc}"
    finally:
        await services.aclose()


def serve(settings: Settings) -> None:
    # Workers import the app by name; they must read the same env, including a .env file.
    os.environ.setdefault("MODELS_CONFIG", settings.MODELS_CONFIG)
    if settings.WORKERS > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set before any worker imports prometheus_client, so /metrics sums every worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="egw-metrics-")
    config = uvicorn.Config(
        "app.main:app",
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WORKERS,
        log_level=settings.LOG_LEVEL,
        log_config=uvicorn_log_config(settings.LOG_LEVEL, settings.LOG_FORMAT),
        access_log=False,  # the gateway writes its own structured access line
        # The gateway decides whom to trust for X-Forwarded-For itself (TRUSTED_PROXIES);
        # uvicorn's own rewriting would let any local client pick its rate-limit bucket.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        loop="uvloop",
        # httptools with the header cap, slow-client timeouts and load cap it lacks.
        http="app.server.protocol:GatewayHttpProtocol",
        # Annotated int, used as a float (loop.call_later): fractions of a second work.
        timeout_keep_alive=settings.KEEPALIVE_TIMEOUT_SECONDS,  # type: ignore[arg-type]
        # Accepted requests get this long to finish once the gateway stops accepting.
        timeout_graceful_shutdown=settings.SHUTDOWN_GRACE_SECONDS,  # type: ignore[arg-type]
    )
    # uvicorn.run() with our server and supervisor: drain on SIGTERM, reload on SIGHUP
    # (app/server/worker.py says what uvicorn's own do instead).
    delay = settings.SHUTDOWN_DELAY_SECONDS
    if settings.WORKERS > 1:
        GatewaySupervisor(config, [config.bind_socket()], shutdown_delay=delay).run()
        return
    server = GatewayServer(config, shutdown_delay=delay)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return one_line(exc)
    # The provider types' route checks quote the built registry: masked here, as in a reload.
    return masked(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
