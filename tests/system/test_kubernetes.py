"""deploy/kubernetes: the overlay renders, every manifest validates offline, and the pieces fit.

Rendering uses `kubectl kustomize` (kustomize built in): the one `make k8s-tools` puts in
.tools/bin, else one on PATH; without either, a small resolver below follows the kustomizations'
plain resources and generators, which is all these manifests use. Validation is
kubernetes-validate's bundled OpenAPI schemas, strict (an unknown field fails), for the oldest
Kubernetes the manifests need (1.30: the preStop `sleep` action) and for the newest the library
knows.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config.settings import Settings
from app.server.supervisor import FLUSH_MARGIN_SECONDS
from tests.kube_support import ROOT, VERSIONS, by_kind, kubectl, kustomize, matches

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAY = KUBE / "overlays" / "example"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The example overlay as a user renders it: after copying secrets.env.example."""
    work = tmp_path_factory.mktemp("kube") / "kubernetes"
    shutil.copytree(KUBE, work)
    overlay = work / "overlays" / "example"
    shutil.copy(overlay / "secrets.env.example", overlay / "secrets.env")
    kubectl_path = kubectl()
    if kubectl_path:
        return kustomize(overlay, kubectl_path)
    return _resolve(overlay)


def test_the_overlay_renders_every_kind_a_deployment_needs(rendered) -> None:
    kinds = sorted({doc["kind"] for doc in rendered})
    assert kinds == sorted(
        {
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "StatefulSet",
        }
    )
    assert all(
        doc["metadata"].get("namespace") == "embeddings"
        for doc in rendered
        if doc["kind"] != "Namespace"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(rendered, version: str) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem


def test_the_base_validates_as_well() -> None:
    # The base alone, as the resolver sees it: a team may build its own overlay on it.
    for doc in _resolve(KUBE / "base"):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_the_deployment_is_probed_locked_down_and_drains(rendered) -> None:
    deployment = by_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    # The pod gets SIGKILL after the grace period: it must cover the gateway's own drain (the
    # delay, accepted requests, the flush), and the longest request must fit in the drain.
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    delay, grace, longest = (
        float(env.get(name, Settings.model_fields[name].default))
        for name in ("SHUTDOWN_DELAY_SECONDS", "SHUTDOWN_GRACE_SECONDS", "REQUEST_TIMEOUT_SECONDS")
    )
    assert grace >= longest
    assert pod["terminationGracePeriodSeconds"] >= delay + grace + FLUSH_MARGIN_SECONDS
    assert "lifecycle" not in container  # a preStop sleep would only add to the drain's delay
    # With a read-only root, /tmp (multi-worker metrics files) must be a volume.
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_the_registry_config_map_is_the_shipped_registry_and_is_where_the_env_says(
    rendered,
) -> None:
    assert (KUBE / "base" / "models.yaml").read_text() == (
        ROOT / "config" / "models.yaml"
    ).read_text(), "run: cp config/models.yaml deploy/kubernetes/base/models.yaml"
    env = by_kind(rendered, "ConfigMap", "embeddings-gateway-env")["data"]
    registry = by_kind(rendered, "ConfigMap", "embeddings-gateway-registry")
    container = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    directory, _, file_name = env["MODELS_CONFIG"].rpartition("/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["registry"] == directory
    assert file_name in registry["data"]


def test_every_variable_the_manifests_set_is_one_the_gateway_reads(rendered) -> None:
    env = by_kind(rendered, "ConfigMap", "embeddings-gateway-env")["data"]
    registry_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "config/models.yaml").read_text()))
    known = set(Settings.model_fields) | registry_vars
    secrets = [
        line.split("=", 1)[0]
        for line in (OVERLAY / "secrets.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert set(env) | set(secrets) <= known, (set(env) | set(secrets)) - known


def test_selectors_connect_the_pieces(rendered) -> None:
    gateway_labels = by_kind(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    redis_labels = by_kind(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    services = [d for d in rendered if d["kind"] == "Service"]
    service = next(s for s in services if s["metadata"]["name"] == "embeddings-gateway")
    assert matches(service["spec"]["selector"], gateway_labels)
    assert not matches(service["spec"]["selector"], redis_labels)
    pdb = by_kind(rendered, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], gateway_labels)
    policy = by_kind(rendered, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], redis_labels)
    assert not matches(policy["podSelector"]["matchLabels"], gateway_labels)
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert matches(source["podSelector"]["matchLabels"], gateway_labels)
    assert not matches(source["podSelector"]["matchLabels"], redis_labels)
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "embeddings-gateway"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    container = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


def _resolve(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization names, recursively, with its generators as plain objects.

    Enough for these manifests only (no patches, name hashes or image rewrites): kubectl's own
    kustomize renders the real thing above.
    """
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs.extend(_resolve(path))
        else:
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for generator in spec.get("configMapGenerator", []):
        if generator.get("behavior") == "merge":
            continue
        data = dict(line.split("=", 1) for line in generator.get("literals", []))
        data.update({name: (directory / name).read_text() for name in generator.get("files", [])})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return docs
