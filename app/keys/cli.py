"""`embeddings-gateway keys create|list|show|update|rotate|revoke`: the admin API's operations
on the same store (Redis when REDIS_URL is set, else KEYS_DB), for bootstrap and scripts.
Prints JSON; a running gateway sees a change within KEYS_CACHE_SECONDS."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from pydantic import ValidationError

from app.config.errors import one_line
from app.config.registry import RegistryError
from app.config.registry_file import load_registry, masked
from app.config.settings import Settings
from app.errors import DomainError
from app.keys.build import build_keys
from app.keys.model import KeyPolicy, KeyUpdate
from app.keys.service import ManagedKeys, UnknownKey
from app.logs import configure_logging
from app.providers.catalog import config_types
from app.state.redis_client import connect as connect_redis

ACTOR = "cli"
_NONE = "none"  # `--budget-usd none` clears a field


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
        environ = settings.interpolation_env(dict(os.environ))
        registry = load_registry(settings.MODELS_CONFIG, environ, config_types())
    except (RegistryError, ValidationError) as exc:
        problem = masked(str(exc)) if isinstance(exc, RegistryError) else str(exc)
        print(f"embeddings-gateway keys: configuration error: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)  # audit lines go to stderr
    return asyncio.run(_run(args, settings, registry))


async def _run(args: argparse.Namespace, settings: Settings, registry: Any) -> int:
    redis = (
        connect_redis(settings.REDIS_URL, 5.0, settings.redis_options)
        if settings.REDIS_URL
        else None
    )
    keys = build_keys(settings, redis, registry, always=True)
    assert keys is not None
    try:
        await keys.store.start()
        print(json.dumps(await _command(args, keys), indent=2))
        return 0
    except ValidationError as exc:
        print(f"embeddings-gateway keys: {one_line(exc)}", file=sys.stderr)
    except DomainError as exc:
        print(f"embeddings-gateway keys: {exc.message}", file=sys.stderr)
    except UnknownKey as exc:
        print(f"embeddings-gateway keys: no API key has the id '{exc}'", file=sys.stderr)
    finally:
        await keys.aclose()
        if redis is not None:
            await redis.aclose()
    return 1


async def _command(args: argparse.Namespace, keys: ManagedKeys) -> Any:
    if args.command == "create":
        record, secret = await keys.create(KeyPolicy.model_validate(_fields(args)), ACTOR)
        return {"id": record.id, "key": secret, **record.public()}
    if args.command == "list":
        return [r.public() for r in await keys.list(team=args.team, name=args.name)]
    if args.command == "show":
        return await keys.describe(await keys.get(args.id))
    if args.command == "update":
        change = KeyUpdate.model_validate(_fields(args))
        await keys.get(args.id)
        return await keys.describe(await keys.update(args.id, change, ACTOR))
    if args.command == "rotate":
        record, secret = await keys.rotate(args.id, args.grace_seconds, ACTOR)
        return {"id": record.id, "key": secret, **record.public()}
    assert args.command == "revoke"
    await keys.get(args.id)
    return (await keys.revoke(args.id, ACTOR)).public()


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options given, as the admin API's JSON fields (`none` meaning null)."""
    fields: dict[str, Any] = {}
    for name in (
        "name",
        "team",
        "rate_limit_per_second",
        "tokens_per_minute",
        "budget_usd",
        "budget_period",
        "expires_at",
        "disabled",
        "priority",
    ):
        value = getattr(args, name)
        if value is not None:
            fields[name] = None if value == _NONE else value
    if args.models is not None:
        models = [model for model in args.models.split(",") if model]
        fields["models"] = None if args.models == _NONE else models
    if args.metadata:
        fields["metadata"] = dict(item.partition("=")[::2] for item in args.metadata)
    return fields


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embeddings-gateway keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "update"):
        command = commands.add_parser(name, help=f"{name} a key")
        if name == "update":
            command.add_argument("id")
        command.add_argument("--name")
        command.add_argument("--team")
        command.add_argument("--metadata", action="append", metavar="KEY=VALUE")
        command.add_argument("--models", help="comma-separated model IDs, or 'none' for all")
        command.add_argument("--rate-limit-per-second", metavar="N")
        command.add_argument("--tokens-per-minute", metavar="N")
        command.add_argument("--budget-usd", metavar="USD")
        command.add_argument("--budget-period", choices=["day", "month", "total"])
        command.add_argument("--expires-at", metavar="ISO8601")
        command.add_argument("--disabled", choices=["true", "false"])
        command.add_argument("--priority", choices=["interactive", "bulk"])
    listing = commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--team")
    listing.add_argument("--name")
    commands.add_parser("show", help="one key, with its spend").add_argument("id")
    rotate = commands.add_parser("rotate", help="a new secret for a key")
    rotate.add_argument("id")
    rotate.add_argument("--grace-seconds", type=float, default=0.0)
    commands.add_parser("revoke", help="revoke a key").add_argument("id")
    return parser
