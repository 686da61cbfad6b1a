"""No Docker engine runs here, so the container files are checked for consistency instead."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.config.settings import Settings
from app.providers.catalog import env_names as provider_env_names
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


def test_every_setting_is_in_the_configuration_reference():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`{name}`" not in reference]
    assert not missing


def test_every_provider_env_name_is_documented_in_the_provider_reference():
    reference = (ROOT / "docs" / "providers.md").read_text()
    missing = sorted(name for name in provider_env_names() if f"`{name}`" not in reference)
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


# -- the lock -------------------------------------------------------------------------------------
# requirements.lock is what the image installs; `make lock` writes it from pyproject.toml. Re-
# resolving here would need the network and take seconds to minutes, so this checks what can
# drift cheaply and exactly: every direct dependency is locked at a version its specifier
# allows, the lock names no direct dependency pyproject has dropped, and every entry is hashed.


@dataclass
class LockEntry:
    version: str
    hashes: int = 0
    via: set[str] = field(default_factory=set)  # who required it, from uv's annotations


PROJECT_SOURCE = "embeddings-gateway (pyproject.toml)"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def read_lock() -> tuple[str, dict[str, LockEntry]]:
    text = (ROOT / "requirements.lock").read_text()
    entries: dict[str, LockEntry] = {}
    current: LockEntry | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = Requirement(line.rstrip(" \\"))
            (pin,) = requirement.specifier
            assert pin.operator == "==", line
            current = entries.setdefault(
                canonicalize_name(requirement.name), LockEntry(pin.version)
            )
            in_via = False
        elif current is not None and stripped.startswith("--hash=sha256:"):
            current.hashes += 1
        elif current is not None and stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif current is not None and in_via and stripped.startswith("#"):
            current.via.add(stripped.removeprefix("#").strip())
    header = text.split("\n", 2)[:2]
    return "\n".join(header), entries


def direct_requirements() -> list[Requirement]:
    data = pyproject()
    return [Requirement(r) for r in data["project"]["dependencies"]] + [
        Requirement(r) for r in data["build-system"]["requires"]
    ]


def test_the_lock_pins_every_direct_dependency_within_its_specifier():
    _, lock = read_lock()
    assert len(lock) > 20, "requirements.lock looks empty"
    problems = []
    for requirement in direct_requirements():
        entry = lock.get(canonicalize_name(requirement.name))
        if entry is None:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{requirement} but requirements.lock pins {entry.version}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_the_lock_names_no_direct_dependency_pyproject_dropped():
    _, lock = read_lock()
    declared = {canonicalize_name(r.name) for r in direct_requirements()}
    stale = sorted({name for name, e in lock.items() if PROJECT_SOURCE in e.via} - declared)
    assert stale == [], f"run `make lock`: no longer in pyproject.toml: {stale}"
    # And uv's annotations are still what this test reads: every runtime dependency carries it.
    runtime = {
        canonicalize_name(Requirement(r).name) for r in pyproject()["project"]["dependencies"]
    }
    assert {n for n, e in lock.items() if PROJECT_SOURCE in e.via} == runtime


def test_every_locked_file_is_hashed_and_the_lock_is_for_the_images_python():
    header, lock = read_lock()
    assert "make lock" in header
    unhashed = sorted(name for name, e in lock.items() if e.hashes == 0)
    assert unhashed == []
    image_python = re.search(r"^FROM python:(3\.\d+)-slim", dockerfile(), re.M)
    lock_python = re.search(r"^IMAGE_PYTHON := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert image_python and lock_python
    assert image_python.group(1) == lock_python.group(1)


def test_the_image_installs_the_lock_with_hashes_then_the_gateway_alone():
    text = dockerfile()
    lock_install = re.search(
        r"^RUN pip install --require-hashes -r requirements\.lock$", text, re.M
    )
    assert lock_install
    assert text.index("COPY requirements.lock") < lock_install.start() < text.index("COPY app ")
    (own,) = re.findall(r"pip install [^\n]*\.\s", text[lock_install.end() :])
    assert "--no-deps" in own and "--no-build-isolation" in own
    # Nothing resolved from pyproject's floating ranges before the lock is installed.
    before = [
        line for line in text[: lock_install.start()].splitlines() if not line.startswith("#")
    ]
    assert not any("pyproject.toml" in line for line in before)


# -- declared test dependencies ---------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Top-level modules imported by ``path``, except inside `try: ... except ImportError`."""
    tree = ast.parse(path.read_text())
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
            for h in node.handlers
        ):
            optional.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_the_tests_and_benchmark_import_is_declared():
    data = pyproject()
    declared = {
        canonicalize_name(Requirement(r).name)
        for r in data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    }
    distributions = packages_distributions()
    ours = {"app", "tests", "bench"}
    undeclared = {}
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("**/*.py")]):
        inside = path.relative_to(ROOT).parts[:-1]
        # Not ours: venvs and peers `make bench` installs (bench/.venv-litellm, bench/.peers/).
        if "node_modules" in inside or any(part.startswith(".") for part in inside):
            continue
        for module in _imports(path) - ours - set(sys.stdlib_module_names):
            dists = {canonicalize_name(d) for d in distributions.get(module, [])}
            if not dists & declared:
                undeclared.setdefault(module, path.relative_to(ROOT).as_posix())
    assert undeclared == {}, "declare these in pyproject.toml's `test` extra"


def test_the_health_check_path_answers_without_auth(gateway):
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_compose_redis_persists_keys_on_a_volume():
    services = compose()
    redis = services["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in services["volumes"]
