"""`embeddings-gateway`: start uvicorn with host, port and workers from settings."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from app.main import build_gateway
from app.registry import RegistryError
from app.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embeddings-gateway", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(argv)
    try:
        settings = Settings()
        build_gateway(settings)  # fail fast, with one clear line, before uvicorn starts
    except (RegistryError, ValidationError) as exc:
        print(f"embeddings-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    # Workers import the app by name; they must read the same env, including a .env file.
    os.environ.setdefault("MODELS_CONFIG", settings.MODELS_CONFIG)
    uvicorn.run(
        "app.main:app",
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WORKERS,
        log_level=settings.LOG_LEVEL,
        # The gateway decides whom to trust for X-Forwarded-For itself (TRUSTED_PROXIES);
        # uvicorn's own rewriting would let any local client pick its rate-limit bucket.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
