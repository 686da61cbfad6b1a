"""What tests/system/test_kubernetes.py and tests/system/test_helm.py share: the repo's root, the
helm and kubectl that `make k8s-tools` installs, the Kubernetes versions to validate against,
and lookups in rendered manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# The folder holding pyproject.toml, wherever this file ends up below it.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
TOOLS = ROOT / ".tools" / "bin"
# The oldest Kubernetes the manifests are meant for (docs/operations.md, "Kubernetes") and the
# newest kubernetes-validate knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def tool(name: str) -> str:
    """helm or kubectl from .tools/bin; a missing one fails the test, never skips it quietly."""
    path = TOOLS / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run `make k8s-tools` (`make test` does)")
    return str(path)


def kubectl() -> str | None:
    """The kubectl of `make k8s-tools`, else one on PATH, else None."""
    path = TOOLS / "kubectl"
    return str(path) if path.is_file() else shutil.which("kubectl")


def kustomize(directory: Path, kubectl_path: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl_path, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} named {name_prefix}*, got {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
