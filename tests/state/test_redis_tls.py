"""TLS to Redis: `rediss://` with `REDIS_CA_FILE`, against a real redis-server speaking TLS
with a certificate from a throwaway CA (made with the `openssl` command)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from app.config.settings import Settings
from app.state.redis_client import REDIS_FAILURES, connect
from tests.harness import free_port
from tests.redis_server import RedisServer

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", "-subj", f"/CN={name} test CA",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_server_cert(directory, "redis")
    other_ca, _, _ = make_ca_and_server_cert(directory, "other")
    server = RedisServer(
        args=(
            "--port", "0",
            "--tls-port", str(port := free_port()),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        )
    )  # fmt: skip
    server.port = port
    server.client = lambda: _tls_client(port, ca)  # type: ignore[method-assign]
    with server:
        yield port, ca, other_ca


def _tls_client(port: int, ca: Path) -> redis.Redis:
    """What the fixture's start-up probe uses: the server speaks only TLS."""
    return redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=2
    )


async def test_rediss_with_the_ca_file_connects(tls_redis):
    port, ca, _ = tls_redis
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, REDIS_URL=f"rediss://127.0.0.1:{port}/0", REDIS_CA_FILE=str(ca)
    )
    assert settings.REDIS_URL is not None
    client = connect(settings.REDIS_URL, 2.0, settings.redis_options)
    try:
        await client.set("tls-probe", b"ok")
        assert await client.get("tls-probe") == b"ok"
    finally:
        await client.aclose()


async def test_a_certificate_from_another_ca_is_refused(tls_redis):
    port, _, other_ca = tls_redis
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, REDIS_URL=f"rediss://127.0.0.1:{port}/0", REDIS_CA_FILE=str(other_ca)
    )
    assert settings.REDIS_URL is not None
    client = connect(settings.REDIS_URL, 2.0, settings.redis_options)
    try:
        with pytest.raises(REDIS_FAILURES):
            await client.ping()
    finally:
        await client.aclose()
