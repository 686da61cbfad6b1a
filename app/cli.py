"""`embeddings-gateway [serve | check-config]`: start uvicorn, or validate the configuration."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from app.config_report import model_table, settings_summary
from app.main import build_gateway
from app.registry import RegistryError
from app.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embeddings-gateway", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "check-config"])
    command = parser.parse_args(argv).command
    try:
        settings = Settings()
        gateway = build_gateway(settings)  # fail fast, with one clear line, before serving
    except (RegistryError, ValidationError) as exc:
        print(f"embeddings-gateway: configuration error: {_one_line(exc)}", file=sys.stderr)
        return 2
    asyncio.run(gateway.aclose())
    if command == "check-config":
        print(json.dumps(settings_summary(settings), indent=2))
        print("\n".join(model_table(gateway.registry)))
        return 0
    serve(settings)
    return 0


def serve(settings: Settings) -> None:
    # Workers import the app by name; they must read the same env, including a .env file.
    os.environ.setdefault("MODELS_CONFIG", settings.MODELS_CONFIG)
    if settings.WORKERS > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set before any worker imports prometheus_client, so /metrics sums every worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="egw-metrics-")
    uvicorn.run(
        "app.main:app",
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WORKERS,
        log_level=settings.LOG_LEVEL,
        access_log=False,  # the gateway writes its own structured access line
        # The gateway decides whom to trust for X-Forwarded-For itself (TRUSTED_PROXIES);
        # uvicorn's own rewriting would let any local client pick its rate-limit bucket.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        loop="uvloop",
        # httptools with the header cap, slow-client timeouts and load cap it lacks.
        http="app.server:GatewayHttpProtocol",
        timeout_keep_alive=settings.KEEPALIVE_TIMEOUT_SECONDS,
    )


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False, include_input=False)
        )
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
