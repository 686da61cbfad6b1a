"""A registry error never shows a value `${VAR}` put in: not in `check-config`, not in the
reload's 400, not in a log line. Each value is shown as the `${VAR}` it came from."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from app.config.registry import RegistryError
from app.runtime.build import providers_for, read_registry
from tests.config.test_registry import GOOD
from tests.config.test_registry_limits import check_config
from tests.harness import GatewayProcess
from tests.server.test_reload import (
    ADMIN,
    UPSTREAM_KEY,
    gateway_env,
    reload_lines,
    running,
    upstream_a,
    wait_for,
)

__all__ = ["upstream_a"]  # the module's fake upstream, shared with tests/server/test_reload.py

SECRET = "sk-live-0123456789abcdef'\\x"  # a quote and a backslash: repr escapes both
KEY_IN_TYPE = GOOD.replace("type: nanogpt", "type: ${UP_KEY}")
KEY_AS_ROUTE_PROVIDER = GOOD.replace("provider: up,", "provider: '${UP_KEY}',")
# Found after validation, by the local type's own route check, which quotes the model name.
KEY_AS_LOCAL_MODEL = """
providers:
  l: {type: local}
models:
  m:
    name: M
    owned_by: me
    dimensions: 384
    max_tokens: 100
    pricing: {per_million_tokens: 0}
    routes: [{provider: l, model: "prefix-${UP_KEY}"}]
"""


def _error(path: Path, environ: dict[str, str]) -> str:
    """What start-up (and a reload) raises: `providers_for` masks the provider types' checks."""
    with pytest.raises(RegistryError) as caught:
        providers_for(read_registry(path, environ))
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KEY_IN_TYPE, "providers.up.type: Input tag '${UP_KEY}' found using 'type'"),
        (KEY_AS_ROUTE_PROVIDER, 'models.m.routes.0.provider: unknown provider "${UP_KEY}"'),
        (KEY_AS_LOCAL_MODEL, 'models.m.routes.0.model: unknown local model "prefix-${UP_KEY}"'),
    ],
)
def test_an_interpolated_value_is_shown_as_its_variable(tmp_path, text, expected):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    message = _error(path, {"UP_KEY": SECRET})
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "sk-live" not in message


def test_every_interpolated_value_is_masked_and_the_file_s_path_is_not(tmp_path):
    # The file's path holds a value; a value too short to be a key (`0`) is left as it is.
    directory = tmp_path / "upstream-name"
    directory.mkdir()
    path = directory / "models.yaml"
    text = KEY_AS_ROUTE_PROVIDER.replace("max_attempts: 3", "cooldown_seconds: ${ZERO}")
    path.write_text(text.replace("${UP_KEY}", "${NAME}"))
    message = _error(path, {"UP_KEY": "k", "NAME": "upstream-name", "ZERO": "0"})
    assert (
        message == f"{path}: models.m.routes.0.provider: unknown provider '${{NAME}}' (known: up)"
    )


def test_check_config_the_reload_answer_and_the_logs_never_show_the_key(tmp_path, upstream_a):
    registry = tmp_path / "models.yaml"
    working = GOOD.replace("${UP_URL:-", "${UP_URL_X:-")
    registry.write_text(working.replace("http://127.0.0.1:1/v1", upstream_a.base_url))
    env = {**gateway_env(registry, workers=2), "UP_KEY": UPSTREAM_KEY + SECRET}
    with running(GatewayProcess(env)) as gateway:
        for text in (KEY_IN_TYPE, KEY_AS_LOCAL_MODEL):
            registry.write_text(text)
            check = check_config(env)
            assert check.returncode == 2
            assert "${UP_KEY}" in check.stderr
            answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=30)
            assert answer.status_code == 400
            message = answer.json()["error"]["message"]
            assert message == check.stderr.strip().removeprefix("embeddings-gateway: ")
            assert "sk-live" not in answer.text and "sk-live" not in check.stdout + check.stderr
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)  # every worker logs its refusal
        wait_for(lambda: len(reload_lines(gateway, "reload refused")) >= 2 + 2, gateway)
        assert all(
            "${UP_KEY}" in line["message"] for line in reload_lines(gateway, "reload refused")
        )
        assert "sk-live" not in gateway.output()
