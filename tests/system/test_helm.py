"""deploy/helm/embeddings-gateway: lint-clean, valid manifests for every switch, and the kustomize
base's essentials kept.

helm and kubectl are the ones `make k8s-tools` puts in .tools/bin (a missing one fails, as
promtool does in tests/system/test_observability.py). Every values case renders with `helm
template` and each manifest is validated by kubernetes-validate, strictly, for the versions
tests/system/test_kubernetes.py uses. ServiceMonitor and PrometheusRule are Prometheus Operator
CRDs, which kubernetes-validate has no schema for: their fields are checked one by one below
instead.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config.settings import Settings
from app.server.supervisor import FLUSH_MARGIN_SECONDS
from tests.kube_support import ROOT, VERSIONS, by_kind, kustomize, matches, tool

CHART = ROOT / "deploy" / "helm" / "embeddings-gateway"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "eg", "embeddings"
FULLNAME = f"{RELEASE}-embeddings-gateway"
CRD_GROUPS = ("monitoring.coreos.com/",)
SECRET = "embeddings-gateway-secrets"  # the ci/ files' existingSecret

Docs = list[dict[str, Any]]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def _render_cached(args: tuple[str, ...]) -> str:
    done = _helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(*args: str) -> Docs:
    """`helm template` with these flags; a copy each call, so tests may change what they get."""
    return [doc for doc in yaml.safe_load_all(_render_cached(args)) if doc]


def render_fails(*args: str) -> str:
    done = _helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode != 0, f"rendered although it should not have: {args}"
    assert not done.stdout.strip()
    return done.stderr


def _case_args(case: Path | None) -> tuple[str, ...]:
    return () if case is None else ("--values", str(case))


def _case_id(case: Path | None) -> str:
    return "defaults" if case is None else case.name.removesuffix("-values.yaml")


CASES = [None, *CI_VALUES]
CASE_IDS = [_case_id(case) for case in CASES]

# What each case renders beyond the defaults (or, with a minus count, without).
BASE_KINDS = Counter({"ConfigMap": 1, "Deployment": 1, "Service": 1, "ServiceAccount": 1})
EXTRA_KINDS = {
    "defaults": {},
    "autoscaling": {"HorizontalPodAutoscaler": 1},
    "pdb": {"PodDisruptionBudget": 1},
    "networkpolicy": {"NetworkPolicy": 1},
    "servicemonitor": {"ServiceMonitor": 1},
    "prometheusrule": {"PrometheusRule": 1},
    "redis": {"StatefulSet": 1, "Service": 1},
    "redis-sentinel": {},
    "otel": {},
    "batch-local": {"PersistentVolumeClaim": 1},
    "batch-s3": {},
    "existing": {"ConfigMap": -1, "ServiceAccount": -1},
    "all": {
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "NetworkPolicy": 2,  # the gateway's, and its Redis'
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
        "StatefulSet": 1,
        "Service": 1,
    },
}


def _gateway(docs: Docs) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its one container."""
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _service(docs: Docs, name: str) -> dict[str, Any]:
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    return service


# --- lint and validity, every case -----------------------------------------------------------


def test_there_is_a_case_per_switch() -> None:
    assert set(CASE_IDS) == set(EXTRA_KINDS), "add the new ci/ file's kinds to EXTRA_KINDS"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_helm_lint_strict_is_clean(case: Path | None) -> None:
    done = _helm("lint", "--strict", str(CHART), *_case_args(case))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_case_renders_the_kinds_it_switches_on(case: Path | None) -> None:
    kinds = Counter(doc["kind"] for doc in render(*_case_args(case)))
    expected = BASE_KINDS.copy()
    expected.update(EXTRA_KINDS[_case_id(case)])
    assert kinds == +expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_manifest_validates_strictly(case: Path | None, version: str) -> None:
    for doc in render(*_case_args(case)):
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # checked field by field in the ServiceMonitor and PrometheusRule tests
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem
        assert doc["metadata"]["name"].startswith(FULLNAME), doc["metadata"]["name"]


def test_the_validation_is_strict_and_knows_no_prometheus_operator_kinds() -> None:
    # So that the test above can fail: an unknown field is an error, not ignored.
    deployment = by_kind(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["bogus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)
    # And the structural checks below are needed: the library cannot validate these.
    monitor = by_kind(render("--set", "serviceMonitor.enabled=true"), "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, VERSIONS[0], strict=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_variable_is_set_twice_and_pods_keep_the_security_context(case: Path | None) -> None:
    pod, container = _gateway(render(*_case_args(case)))
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/srv/data"} <= writable


def test_the_chart_refuses_unknown_values() -> None:
    assert "replicaCountt" in render_fails("--set", "replicaCountt=3")
    assert "redis/mode" in render_fails("--set", "redis.mode=replicated")
    assert "otel/protocol" in render_fails("--set", "otel.protocol=http/json")


def test_the_chart_needs_kubernetes_1_30() -> None:
    assert "kubeVersion" in render_fails("--kube-version", "1.29.0")
    assert render("--kube-version", "1.30.0")


def test_the_app_version_is_the_gateway_s() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    (container,) = by_kind(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"embeddings-gateway:{project['version']}"


# --- the kustomize base's essentials -----------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> Docs:
    return kustomize(ROOT / "deploy" / "kubernetes" / "base", tool("kubectl"))


def test_the_deployment_keeps_the_kustomize_base_essentials(base: Docs) -> None:
    base_pod, base_container = _gateway(base)
    pod, container = _gateway(render())
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe] == base_container[probe], probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == base_container["ports"]
    assert pod["securityContext"] == base_pod["securityContext"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert container["securityContext"] == base_container["securityContext"]
    assert container["resources"] == base_container["resources"]
    assert pod["automountServiceAccountToken"] is base_pod["automountServiceAccountToken"] is False
    assert (
        by_kind(render(), "Deployment")["spec"]["strategy"]
        == by_kind(base, "Deployment")["spec"]["strategy"]
    )

    # The drain: the same grace period, and the same delay and grace as the base's pods get
    # (the base leaves them to the gateway's defaults).
    base_env = by_kind(base, "ConfigMap", "embeddings-gateway-env")["data"]
    env = _env(container)
    for name in ("SHUTDOWN_DELAY_SECONDS", "SHUTDOWN_GRACE_SECONDS"):
        expected = float(base_env.get(name, Settings.model_fields[name].default))
        assert float(env[name]) == expected, name
    assert pod["terminationGracePeriodSeconds"] == base_pod["terminationGracePeriodSeconds"]
    delay, grace = float(env["SHUTDOWN_DELAY_SECONDS"]), float(env["SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= delay + grace + FLUSH_MARGIN_SECONDS
    assert "lifecycle" not in container  # a preStop sleep would only add to the delay

    # The registry: where MODELS_CONFIG points, mounted from a ConfigMap, as in the base.
    assert env["MODELS_CONFIG"] == base_env["MODELS_CONFIG"]

    def registry_mount(pod_spec: dict[str, Any], box: dict[str, Any]) -> str:
        config_volumes = {v["name"] for v in pod_spec["volumes"] if "configMap" in v}
        (mount,) = [m for m in box["volumeMounts"] if m["name"] in config_volumes]
        return mount["mountPath"]

    assert registry_mount(pod, container) == registry_mount(base_pod, base_container)
    assert env["MODELS_CONFIG"].rpartition("/")[0] == registry_mount(pod, container)

    # The writable /tmp, the same size.
    def tmp_volume(pod_spec: dict[str, Any], box: dict[str, Any]) -> dict[str, Any]:
        (mount,) = [m for m in box["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
        return volume["emptyDir"]

    assert tmp_volume(pod, container) == tmp_volume(base_pod, base_container)

    # The base's plain settings (its env ConfigMap), but for the Redis the chart leaves unset
    # unless told (redis.url or redis.enabled).
    for name, value in base_env.items():
        if name != "REDIS_URL":
            assert env[name] == value, name


def test_the_drain_follows_the_shutdown_values() -> None:
    # --set-json: --set would pass 120.5 as a string, which the schema refuses.
    shutdown = {"delaySeconds": 10, "graceSeconds": 120.5, "marginSeconds": 7}
    pod, container = _gateway(render("--set-json", f"shutdown={json.dumps(shutdown)}"))
    env = _env(container)
    assert (env["SHUTDOWN_DELAY_SECONDS"], env["SHUTDOWN_GRACE_SECONDS"]) == ("10", "120.5")
    assert pod["terminationGracePeriodSeconds"] == math.ceil(10 + 120.5 + 7) == 138
    assert "marginSeconds" in render_fails("--set", "shutdown.marginSeconds=1")


def test_the_base_s_other_pieces_have_their_switches(base: Docs) -> None:
    docs = render("--values", str(CHART / "ci" / "all-values.yaml"))
    hpa, base_hpa = (
        by_kind(docs, "HorizontalPodAutoscaler"),
        by_kind(base, "HorizontalPodAutoscaler"),
    )
    for field in ("minReplicas", "maxReplicas", "metrics", "behavior"):
        assert hpa["spec"][field] == base_hpa["spec"][field], field
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert "replicas" not in by_kind(docs, "Deployment")["spec"]  # the HPA owns it
    assert (
        by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"]
        == by_kind(base, "PodDisruptionBudget")["spec"]["minAvailable"]
    )
    service, base_service = _service(docs, FULLNAME), by_kind(base, "Service")
    assert service["spec"]["ports"] == base_service["spec"]["ports"]
    assert service["spec"]["type"] == base_service["spec"]["type"]
    # Without a ServiceMonitor the Service carries the base's scrape annotations instead.
    assert (
        _service(render(), FULLNAME)["metadata"]["annotations"]
        == base_service["metadata"]["annotations"]
    )
    assert "prometheus.io/scrape" not in service["metadata"].get("annotations", {})


# --- how the pieces connect ---------------------------------------------------------------------


def test_selectors_connect_the_pieces() -> None:
    docs = render("--values", str(CHART / "ci" / "all-values.yaml"))
    deployment = by_kind(docs, "Deployment")
    gateway_labels = deployment["spec"]["template"]["metadata"]["labels"]
    redis_set = by_kind(docs, "StatefulSet")
    redis_labels = redis_set["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], gateway_labels)
    assert matches(redis_set["spec"]["selector"]["matchLabels"], redis_labels)

    service = _service(docs, FULLNAME)
    assert matches(service["spec"]["selector"], gateway_labels)
    assert not matches(service["spec"]["selector"], redis_labels)
    redis_service = _service(docs, f"{FULLNAME}-redis")
    assert matches(redis_service["spec"]["selector"], redis_labels)
    assert not matches(redis_service["spec"]["selector"], gateway_labels)
    assert redis_set["spec"]["serviceName"] == redis_service["metadata"]["name"]

    pdb = by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert matches(pdb, gateway_labels) and not matches(pdb, redis_labels)

    policies = {p["metadata"]["name"]: p["spec"] for p in docs if p["kind"] == "NetworkPolicy"}
    gateway_policy, redis_policy = policies[FULLNAME], policies[f"{FULLNAME}-redis"]
    assert matches(gateway_policy["podSelector"]["matchLabels"], gateway_labels)
    assert not matches(gateway_policy["podSelector"]["matchLabels"], redis_labels)
    (rule,) = gateway_policy["ingress"]
    assert "from" not in rule  # ingressFrom empty: anyone, but only on the gateway's port
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert matches(redis_policy["podSelector"]["matchLabels"], redis_labels)
    assert not matches(redis_policy["podSelector"]["matchLabels"], gateway_labels)
    (rule,) = redis_policy["ingress"]
    (source,) = rule["from"]
    assert matches(source["podSelector"]["matchLabels"], gateway_labels)
    assert not matches(source["podSelector"]["matchLabels"], redis_labels)
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]

    # The base's label, so a Redis behind deploy/kubernetes/base's policy admits these pods.
    assert gateway_labels["embeddings-gateway/redis-client"] == "true"


def test_the_network_policy_takes_the_sources_it_is_given() -> None:
    docs = render("--values", str(CHART / "ci" / "networkpolicy-values.yaml"))
    (rule,) = by_kind(docs, "NetworkPolicy")["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def test_the_service_monitor_scrapes_metrics_from_every_gateway_pod() -> None:
    docs = render("--values", str(CHART / "ci" / "servicemonitor-values.yaml"))
    monitor = by_kind(docs, "ServiceMonitor")
    # Structure, in place of a schema (monitoring.coreos.com/v1).
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    for duration in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", duration)
    # It selects the gateway's Service (by its labels) and names one of its ports.
    service = _service(docs, FULLNAME)
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert "annotations" not in service["metadata"]  # no second scrape through annotations
    redis_docs = render("--values", str(CHART / "ci" / "all-values.yaml"))
    redis_service = _service(redis_docs, f"{FULLNAME}-redis")
    assert not matches(
        monitor["spec"]["selector"]["matchLabels"], redis_service["metadata"]["labels"]
    )


def test_the_prometheus_rule_is_the_shipped_alerts_yml() -> None:
    docs = render("--values", str(CHART / "ci" / "prometheusrule-values.yaml"))
    rule = by_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
            assert alert["alert"] and alert["expr"]
    # Read through a link, never a copy kept by hand.
    link = CHART / "files" / "alerts.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "deploy/prometheus/alerts.yml")


# --- the registry ConfigMap -----------------------------------------------------------------------


def _checksum(docs: Docs) -> str:
    annotations = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


def test_the_registry_is_the_shipped_one_where_models_config_points() -> None:
    docs = render()
    registry = by_kind(docs, "ConfigMap", f"{FULLNAME}-registry")
    assert registry["data"]["models.yaml"] == (ROOT / "config" / "models.yaml").read_text()
    link = CHART / "files" / "models.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "config" / "models.yaml")
    pod, container = _gateway(docs)
    directory, _, file_name = _env(container)["MODELS_CONFIG"].rpartition("/")
    (volume,) = [v for v in pod["volumes"] if v.get("configMap")]
    assert volume["configMap"]["name"] == registry["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": directory, "readOnly": True}
    assert file_name in registry["data"]


def test_the_checksum_annotation_follows_config_models(tmp_path: Path) -> None:
    def values(name: str, models: object) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"config": {"models": models}}))
        return str(path)

    one = "providers: {local: {type: local}}\nmodels: {}\n"
    two = "providers: {local: {type: local, threads: 4}}\nmodels: {}\n"
    shipped = render()
    first = render("--values", values("one", one))
    second = render("--values", values("two", two))
    mapped = render("--values", values("map", yaml.safe_load(two)))  # the map form
    assert by_kind(first, "ConfigMap")["data"]["models.yaml"] == one
    assert yaml.safe_load(by_kind(mapped, "ConfigMap")["data"]["models.yaml"]) == yaml.safe_load(
        two
    )

    checksums = [_checksum(docs) for docs in (shipped, first, second, mapped)]
    assert len(set(checksums)) == 4, "a different registry must roll the pods"
    # The same registry again (another file, so not the cached render): the same checksum.
    assert _checksum(render("--values", values("one-again", one))) == checksums[1]
    # It hashes the ConfigMap alone: other values do not roll the pods through it.
    assert _checksum(render("--set", "replicaCount=3")) == checksums[0]


def test_an_existing_config_map_is_mounted_and_not_rendered() -> None:
    docs = render("--values", str(CHART / "ci" / "existing-values.yaml"))
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    pod, _ = _gateway(docs)
    (volume,) = [v for v in pod["volumes"] if v.get("configMap")]
    assert volume["configMap"]["name"] == "my-registry"
    annotations = by_kind(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations")
    assert not annotations  # nothing to hash: rolling the pods is the ConfigMap owner's call


# --- secrets --------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(API_KEYS?|TOKEN|PASSWORD|SECRET|SECRET_ACCESS_KEY|HEADERS)$|ACCESS_KEY")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_secrets_are_never_rendered_inline(case: Path | None) -> None:
    docs = render(*_case_args(case))
    assert "Secret" not in {doc["kind"] for doc in docs}
    _, container = _gateway(docs)
    for variable in container["env"]:
        if SECRET_NAME.search(variable["name"]):
            assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], variable
    values = yaml.safe_load(case.read_text()) if case else {}
    if values.get("existingSecret"):
        assert container["envFrom"][0] == {"secretRef": {"name": values["existingSecret"]}}
    for value in _env(container).values():
        assert not re.match(r"^[a-z]+://[^/@]*:[^/@]+@", value), value


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--set-string", "env.NANOGPT_API_KEY=sk-never-rendered-1", "existingSecret"),
        ("--set-string", "env.GATEWAY_ADMIN_TOKEN=sk-never-rendered-2", "existingSecret"),
        ("--set-string", "env.REDIS_PASSWORD=sk-never-rendered-3", "existingSecret"),
        (
            "--set-string",
            "env[0].name=AWS_SECRET_ACCESS_KEY,env[0].value=sk-never-rendered-4",
            "existingSecret",
        ),
        ("--set-string", "env.OTEL_EXPORTER_OTLP_HEADERS=x-key=sk-never-rendered-5", "valueFrom"),
        ("--set-string", "redis.url=redis://:sk-never-rendered-6@redis:6379/0", "REDIS_PASSWORD"),
        ("--set-string", "env.REDIS_URL=rediss://u:sk-never-rendered-7@r:6380", "REDIS_PASSWORD"),
    ],
    ids=[
        "api-key",
        "admin-token",
        "redis-password",
        "aws-secret-in-a-list",
        "otel-headers",
        "redis-url-password",
        "redis-url-password-in-env",
    ],
)
def test_a_secret_in_values_is_refused_and_not_echoed(flag: str, value: str, says: str) -> None:
    error = render_fails(flag, value)
    assert says in error
    assert "sk-never-rendered" not in error


def test_a_secret_from_a_value_from_is_allowed() -> None:
    env = [
        {
            "name": "NANOGPT_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "nanogpt", "key": "api-key"}},
        }
    ]
    _, container = _gateway(render("--set-json", f"env={json.dumps(env)}"))
    assert env[0] in container["env"]


# --- settings derived from values -----------------------------------------------------------------


def test_env_may_be_a_map_or_a_list_and_wins_over_what_the_chart_sets() -> None:
    _, container = _gateway(render("--set", "env.WORKERS=4,env.RATE_LIMIT_PER_SECOND=200"))
    env = _env(container)
    assert (env["WORKERS"], env["RATE_LIMIT_PER_SECOND"]) == ("4", "200")
    listed = [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "CACHE_ENABLED", "value": "false"}]
    _, container = _gateway(render("--set-json", f"env={json.dumps(listed)}"))
    env = _env(container)
    assert (env["LOG_LEVEL"], env["CACHE_ENABLED"], env["WORKERS"]) == ("debug", "false", "2")


def test_every_variable_the_chart_sets_is_one_the_gateway_reads() -> None:
    registry_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "config/models.yaml").read_text()))
    # Read by the OpenTelemetry SDK itself.
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
    }
    known = set(Settings.model_fields) | registry_vars | otel
    for case in CASES:
        _, container = _gateway(render(*_case_args(case)))
        names = {e["name"] for e in container["env"]}
        assert names - {"RATE_LIMIT_PER_SECOND", "TRUSTED_PROXIES"} <= known, names - known


def test_redis_settings_per_mode() -> None:
    assert not {
        name
        for name in _env(_gateway(render())[1])
        if name.startswith("REDIS_") and name != "REDIS_MODE"
    }
    env = _env(_gateway(render("--set", "redis.url=rediss://redis.example:6380/1"))[1])
    assert (env["REDIS_URL"], env["REDIS_MODE"]) == ("rediss://redis.example:6380/1", "standalone")
    env = _env(
        _gateway(render("--set", "redis.mode=cluster,redis.url=redis://node-0.redis:6379"))[1]
    )
    assert (env["REDIS_URL"], env["REDIS_MODE"]) == ("redis://node-0.redis:6379", "cluster")
    assert "redis.url" in render_fails("--set", "redis.mode=cluster")

    env = _env(_gateway(render("--values", str(CHART / "ci" / "redis-sentinel-values.yaml")))[1])
    assert env["REDIS_MODE"] == "sentinel"
    assert env["REDIS_SENTINELS"] == ",".join(
        f"redis-sentinel-{i}.redis-sentinel:26379" for i in range(3)
    )
    assert env["REDIS_SENTINEL_MASTER"] == "mymaster"
    assert "REDIS_URL" not in env
    assert "sentinelMaster" in render_fails(
        "--set", "redis.mode=sentinel,redis.sentinels={a:26379}"
    )

    docs = render("--values", str(CHART / "ci" / "redis-values.yaml"))
    env = _env(_gateway(docs)[1])
    redis_service = _service(docs, f"{FULLNAME}-redis")
    assert env["REDIS_URL"] == f"redis://{redis_service['metadata']['name']}:6379/0"
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    assert "set one of them" in render_fails(
        "--set", "redis.enabled=true,redis.url=redis://elsewhere:6379"
    )


def test_the_bundled_redis_is_the_kustomize_one() -> None:
    ours = by_kind(render("--values", str(CHART / "ci" / "redis-values.yaml")), "StatefulSet")
    theirs = by_kind(
        kustomize(ROOT / "deploy" / "kubernetes" / "redis", tool("kubectl")), "StatefulSet"
    )
    (container,) = ours["spec"]["template"]["spec"]["containers"]
    (their_container,) = theirs["spec"]["template"]["spec"]["containers"]
    for field in (
        "image",
        "args",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ):
        assert container[field] == their_container[field], field
    pod, their_pod = ours["spec"]["template"]["spec"], theirs["spec"]["template"]["spec"]
    assert pod["securityContext"] == their_pod["securityContext"]
    assert ours["spec"]["volumeClaimTemplates"] == theirs["spec"]["volumeClaimTemplates"]
    assert "--appendonly" in container["args"]


def test_otel_settings() -> None:
    assert not [n for n in _env(_gateway(render())[1]) if n.startswith("OTEL_")]
    _, container = _gateway(render("--values", str(CHART / "ci" / "otel-values.yaml")))
    env = _env(container)
    assert {k: v for k, v in env.items() if k.startswith("OTEL_")} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "embeddings-gateway",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    (headers,) = [e for e in container["env"] if e["name"] == "OTEL_EXPORTER_OTLP_HEADERS"]
    assert headers["valueFrom"] == {
        "secretKeyRef": {"name": SECRET, "key": "OTEL_EXPORTER_OTLP_HEADERS"}
    }
    _, container = _gateway(render("--values", str(CHART / "ci" / "all-values.yaml")))
    env = _env(container)
    assert (env["OTEL_EXPORTER_OTLP_PROTOCOL"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("grpc", "0.5")
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=test,service.namespace=search"
    assert "otel.endpoint" in render_fails("--set", "otel.enabled=true")
    assert "headersSecret" in render_fails(
        "--set", "otel.enabled=true,otel.endpoint=http://c:4318,otel.headersSecret.key=h"
    )


def _data_volume(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/srv/data"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_local_batch_storage_on_a_volume() -> None:
    docs = render("--values", str(CHART / "ci" / "batch-local-values.yaml"))
    pod, container = _gateway(docs)
    env = _env(container)
    assert env["BATCH_STORAGE"] == "local"
    assert (env["BATCH_DIR"], env["BATCH_DB"], env["KEYS_DB"]) == (
        "/srv/data/batches",
        "/srv/data/batches.db",
        "/srv/data/keys.db",
    )
    claim = by_kind(docs, "PersistentVolumeClaim")
    assert _data_volume(pod, container) == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # Shared by every replica, so pods may surge during a rollout.
    assert by_kind(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"


def test_a_read_write_once_volume_means_one_replica_replaced_not_surged() -> None:
    assert "ReadWriteMany" in render_fails("--set", "batch.persistence.enabled=true")
    assert "ReadWriteMany" in render_fails(
        "--set", "batch.persistence.enabled=true,replicaCount=1,autoscaling.enabled=true"
    )
    docs = render("--set", "batch.persistence.enabled=true,replicaCount=1")
    # A surge pod on another node could not attach the volume: replace the pod instead.
    assert by_kind(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    docs = render(
        "--set",
        "batch.persistence.enabled=true,batch.persistence.existingClaim=mine,"
        "batch.persistence.accessModes={ReadWriteMany}",
    )
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod, container = _gateway(docs)
    assert _data_volume(pod, container)["persistentVolumeClaim"] == {"claimName": "mine"}


def test_s3_batch_storage() -> None:
    docs = render("--values", str(CHART / "ci" / "batch-s3-values.yaml"))
    pod, container = _gateway(docs)
    env = _env(container)
    assert {k: v for k, v in env.items() if k.startswith("BATCH_")} == {
        "BATCH_STORAGE": "s3",
        "BATCH_DB": "/srv/data/batches.db",
        "BATCH_S3_BUCKET": "embeddings-batches",
        "BATCH_S3_PREFIX": "gateway/",
        "BATCH_S3_ENDPOINT_URL": "http://minio.storage:9000",
        "BATCH_S3_REGION": "us-east-1",
    }
    assert not [n for n in env if n.startswith("AWS_")]  # credentials: existingSecret only
    assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
    assert "emptyDir" in _data_volume(pod, container)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert "batch.s3.bucket" in render_fails("--set", "batch.storage=s3")


# --- NOTES.txt ------------------------------------------------------------------------------------


def _notes(*args: str) -> str:
    done = _helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.partition("\nNOTES:\n")[2]
    assert notes, done.stdout
    return notes


def test_the_notes_say_how_to_reach_the_service_and_sign_in() -> None:
    notes = _notes()
    assert f"port-forward service/{FULLNAME} 8000:80" in notes
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:80" in notes
    assert "/ui" in notes and "GATEWAY_ADMIN_TOKEN" in notes
    assert "authentication is OFF" in notes  # no existingSecret

    notes = _notes("--values", str(CHART / "ci" / "existing-values.yaml"))
    assert f"get secret {SECRET} -o jsonpath='{{.data.GATEWAY_ADMIN_TOKEN}}'" in notes
    assert "authentication is OFF" not in notes
    assert ".status.loadBalancer.ingress[0]" in notes  # service.type LoadBalancer

    notes = _notes("--set", "service.type=NodePort,redis.enabled=true")
    assert ".spec.ports[0].nodePort" in notes
    assert "no redis.url" not in notes


def test_a_missing_tool_fails_and_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeError, match=r"make k8s-tools"):
        tool("helm-that-is-not-installed")


# --- docs/helm.md ---------------------------------------------------------------------------------


def _documented() -> dict[str, str]:
    """docs/helm.md's values table: each value's path and its default cell."""
    rows = re.findall(
        r"^\| `([^`]+)` \| (.*?) \| .* \|$", (ROOT / "docs/helm.md").read_text(), re.M
    )
    return dict(rows)


def _paths(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every path in values.yaml, maps included, down to the scalars, lists and empty maps."""
    found: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        found[path] = value
        if isinstance(value, dict):
            found.update(_paths(value, f"{path}."))
    return found


def _as_documented(value: Any) -> str:
    if value is None or isinstance(value, bool | list) or value in ({}, ""):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_docs_list_every_value_with_its_default() -> None:
    documented = _documented()
    values = _paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert set(documented) <= set(values), set(documented) - set(values)
    for path, value in values.items():
        if isinstance(value, dict) and value:
            continue  # its leaves are what must be documented, or the map as a whole
        ancestors = [path.rsplit(".", n)[0] for n in range(path.count(".") + 1)]
        assert any(a in documented for a in ancestors), f"docs/helm.md does not list {path}"
        if path in documented and not (isinstance(value, dict) and value):
            # A map with content is summed up in words; anything else shows as values.yaml has it.
            assert documented[path] == _as_documented(value), path
