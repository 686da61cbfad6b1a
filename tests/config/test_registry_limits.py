"""The registry's reading bounds, on the real CLI: a size cap, YAML aliases bounded (an alias
bomb is refused at once, with no memory growth, while ordinary aliases load), and a large
registry reloaded in a worker thread while requests keep being answered."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app.config.registry import RegistryError
from app.config.yaml_file import MAX_DEPTH, MAX_REGISTRY_BYTES
from app.runtime.build import read_registry
from tests.harness import ROOT, GatewayProcess, model_entry
from tests.server.test_reload import (
    ADMIN,
    UPSTREAM_KEY,
    gateway_env,
    registry_to,
    running,
    upstream_a,
)

__all__ = ["upstream_a"]  # the module's fake upstream, shared with tests/server/test_reload.py

# Ten lines, nine aliases each: 9**9 (387 million) strings once expanded.
ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
providers: {up: {type: openai, base_url: "http://127.0.0.1:1/v1", extra: *i}}
"""


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config"],
        env={**env, "PORT": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_an_alias_bomb_is_refused_at_once_by_reload_and_check_config(tmp_path, upstream_a):
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    env = gateway_env(registry, workers=1)
    with running(GatewayProcess(env), workers=1) as gateway:
        assert gateway.process is not None
        before = rss_bytes(gateway.process.pid)
        registry.write_text(ALIAS_BOMB)
        began = time.monotonic()
        answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=30)
        took = time.monotonic() - began
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]["message"]
        assert "its aliases (*name) and merge keys (<<) expand to" in message
        assert took < 5  # refused before anything expands (milliseconds, given slack)
        assert rss_bytes(gateway.process.pid) - before < 20 * 1024 * 1024
        assert httpx.get(f"{gateway.url}/v1/models", timeout=10).status_code == 200
    check = check_config(env)
    assert check.returncode == 2
    assert "its aliases (*name) and merge keys (<<) expand to" in check.stderr


def test_a_registry_over_the_cap_is_refused_with_a_clear_line(tmp_path, upstream_a):
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    env = gateway_env(registry, workers=1)
    with running(GatewayProcess(env), workers=1) as gateway:
        good = registry.read_text()
        padding = "#" * 99 + "\n"
        registry.write_text(good + padding * (MAX_REGISTRY_BYTES // len(padding) + 1))
        answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=30)
        assert answer.status_code == 400, answer.text
        expected = f"{registry}: larger than {MAX_REGISTRY_BYTES} bytes (4 MiB)"
        assert expected in answer.json()["error"]["message"]
    check = check_config(env)
    assert check.returncode == 2 and expected in check.stderr
    registry.write_text(good + "#" * (MAX_REGISTRY_BYTES - len(good) - 1) + "\n")
    assert read_registry(registry, {}).models  # at the cap exactly: read


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", "nested deeper than 32"),
        # Aliases may not nest deeper than the file itself may.
        (
            "a: &a "
            + "[" * 20
            + "]" * 20
            + "\nb: &b "
            + "[*a]"
            + "\nc: "
            + "[" * 12
            + "*b"
            + "]" * 12
            + "\n",
            "nested deeper than 32",
        ),
        ("a: &a [*a]\n", "line 1, column 4: an alias inside its own anchor"),
    ],
)
def test_alias_bombs_recursive_aliases_and_deep_nesting_are_refused(tmp_path, text, expected):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=r"\S") as caught:
        read_registry(path, {})
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_ordinary_aliases_and_merge_keys_load_as_their_values(tmp_path, upstream_a):
    # PyYAML's own writer anchors a value used twice; people write merge keys for shared policy.
    policy = {"timeout_seconds": 3, "max_attempts": 2}
    route = {"provider": "up", "model": "m-up", **policy}
    entry = model_entry([route])
    text = yaml.safe_dump(
        {
            "providers": {"up": {"type": "openai", "base_url": upstream_a.base_url + "/v1"}},
            "models": {"a": entry, "b": entry},
        }
    )
    assert "&id001" in text and "*id001" in text  # the writer did anchor the shared entry
    path = tmp_path / "models.yaml"
    path.write_text(text)
    assert set(read_registry(path, {}).models) == {"a", "b"}
    path.write_text(
        text.replace("providers:", "base: &base {timeout_seconds: 7}\nproviders:", 1).replace(
            "  up:\n", "  up:\n    <<: *base\n", 1
        )
    )
    with pytest.raises(RegistryError, match="base"):  # the merge loaded; `base` is no field
        read_registry(path, {})


def test_a_registry_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_bytes(b"providers: {}\nmodels: \xff\n")
    with pytest.raises(RegistryError, match=r"models.yaml: not UTF-8 text \(at byte offset 22\)"):
        read_registry(path, {})


# Few enough that rebuilding the router (on the event loop, proportional to routes) stays short;
# each route sets every override, so that parsing and validation take seconds.
MODELS = 5_000
OVERRIDES = {
    "timeout_seconds": 4.5,
    "max_attempts": 3,
    "backoff_base_seconds": 0.1,
    "cooldown_failures": 4,
    "cooldown_seconds": 20.0,
    "max_batch_size": 512,
    "max_tokens_per_call": 100_000,
    "max_concurrency_per_request": 3,
    "timeout_per_1k_tokens_seconds": 0.04,
    "hedge_after_ms": 0,
    "hedge_max_ratio": 0.2,
    "micro_batching": True,
    "max_inflight_calls": 3,
    "batch_window_ms": 0.0,
    "weight": 1.0,
}


def test_a_large_registry_reloads_while_requests_are_answered(tmp_path, upstream_a):
    """~3.5 MiB: seconds of parsing and validation, in a worker thread. A steady stream of
    /healthz on the same (only) worker never waits long meanwhile."""
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    models = {
        f"model-{n:05d}": model_entry([{"provider": "up", "model": f"upstream-{n}", **OVERRIDES}])
        | {"description": f"Model number {n}, with every route override set, to be parsed."}
        for n in range(MODELS)
    }
    providers = {"up": {"type": "openai", "base_url": upstream_a.base_url, "api_key": UPSTREAM_KEY}}
    big = yaml.safe_dump({"providers": providers, "models": models}, sort_keys=False)
    assert 2 * 1024 * 1024 < len(big) < MAX_REGISTRY_BYTES
    with running(GatewayProcess(gateway_env(registry, workers=1)), workers=1) as gateway:
        registry.write_text(big)
        waits: list[float] = []
        statuses: set[int] = set()
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                deadline = time.monotonic() + 120  # bounded, whatever the reload does
                while not done.is_set() and time.monotonic() < deadline:
                    began = time.monotonic()
                    statuses.add(client.get("/healthz").status_code)
                    waits.append(time.monotonic() - began)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            time.sleep(0.2)
            began = time.monotonic()
            answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=120)
            took = time.monotonic() - began
        finally:
            done.set()
            prober.join()
        assert answer.status_code == 200, answer.text
        assert answer.json()["models"] == MODELS
        assert len(waits) >= 10 and statuses == {200}
        worst = max(waits)
        # The reload's seconds were not the requests' seconds (parsing on the loop stalled every
        # request for all of them): no request waited 1 s, nor half as long as the reload.
        assert worst < 1.0, (worst, took)
        assert worst < took / 2, (worst, took)
