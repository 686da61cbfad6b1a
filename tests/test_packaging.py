"""No Docker engine runs here, so the container files are checked for consistency instead."""

from __future__ import annotations

import re

import httpx
import yaml

from app.providers.catalog import env_names as provider_env_names
from app.settings import Settings
from tests.harness import ROOT


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example_names() -> set[str]:
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_env_example_names_only_real_settings_and_covers_the_secrets():
    # A provider's env names are declared by its type (app/providers/), not by Settings.
    fields = set(Settings.model_fields) | provider_env_names()
    names = env_example_names()
    assert names <= fields, names - fields
    assert {"GATEWAY_API_KEYS", "NANOGPT_API_KEY", "AIML_API_KEY", "NUGEN_API_KEY"} <= names


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`{name}`" not in readme]
    assert not missing


def test_every_provider_env_name_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in provider_env_names() if f"`{name}`" not in readme)
    assert not missing


def test_compose_runs_the_gateway_beside_a_private_healthy_redis():
    services = compose()["services"]
    assert set(services) >= {"gateway", "redis"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:7-alpine")
    assert "healthcheck" in redis
    assert "ports" not in redis  # reachable on the compose network only
    gateway = services["gateway"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["env_file"] == ".env"
    assert gateway["environment"]["REDIS_URL"].startswith("redis://redis:6379")
    assert set(gateway["environment"]) <= set(Settings.model_fields)
    container_port = int(gateway["environment"]["PORT"])
    assert any(str(p).endswith(f":{container_port}") for p in gateway["ports"])


def test_dockerfile_is_slim_cached_non_root_and_health_checked():
    text = dockerfile()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", text, re.M)
    assert text.index("COPY pyproject.toml") < text.index("COPY app ")  # deps layer first
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'CMD ["embeddings-gateway"]' in text
    health = re.search(r"HEALTHCHECK.*?:%s(/\w+)", text, re.S)
    assert health
    assert health.group(1) == "/healthz"


def test_the_health_check_path_answers_without_auth(gateway):
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
