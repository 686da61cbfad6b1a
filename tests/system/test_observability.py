"""deploy/grafana and deploy/prometheus: every metric they name is one the gateway exports, the
alert rules pass promtool's check and its unit tests, and the spend counter they chart is right.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLIENT_KEY
from tests.harness import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "embeddings-gateway.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
_METRIC = re.compile(r"\bembeddings_gateway_[a-z0-9_]+")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def _exported(gateway_url: str) -> dict[str, str]:
    """Metric family name -> type, from the gateway's own /metrics."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def _unknown_names(exprs: list[str], families: dict[str, str]) -> set[str]:
    unknown = set()
    for name in {m for expr in exprs for m in _METRIC.findall(expr)}:
        if name in families:
            continue
        base = next((name.removesuffix(s) for s in _HISTOGRAM_SERIES if name.endswith(s)), None)
        if base is None or families.get(base) != "histogram":
            unknown.add(name)
    return unknown


def test_every_metric_in_the_dashboard_is_exported(gateway) -> None:
    exprs = list(_exprs(json.loads(DASHBOARD.read_text())))
    assert len(exprs) >= 15
    assert _unknown_names(exprs, _exported(gateway.url)) == set()


def test_every_metric_in_the_alert_rules_is_exported(gateway) -> None:
    exprs = list(_exprs(yaml.safe_load(RULES.read_text())))
    assert len(exprs) == 6
    assert _unknown_names(exprs, _exported(gateway.url)) == set()


def test_the_name_check_itself_catches_a_typo(gateway) -> None:
    families = _exported(gateway.url)
    assert _unknown_names(["rate(embeddings_gateway_request_total[5m])"], families) == {
        "embeddings_gateway_request_total"
    }
    # _bucket is only a series of a histogram, not of a counter.
    assert _unknown_names(["embeddings_gateway_tokens_total_bucket"], families)


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    charts = [p for p in panels if p["type"] != "row"]
    for panel in charts:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    titles = " ".join(p["title"].lower() for p in charts)
    for subject in (
        "requests",
        "error",
        "latency",
        "upstream",
        "cache",
        "rate-limited",
        "tokens",
        "batch",
    ):
        assert subject in titles, subject
    assert "spend" in titles


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # a missing tool must fail the suite, never skip it quietly
        raise RuntimeError("promtool is not installed: `make test` installs Debian's prometheus")
    return path


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 rules found" in done.stdout + done.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _spend(gateway_url: str, model: str) -> float:
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "embeddings_gateway_spend_usd":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("model") == model:
                    return sample.value
    return 0.0


def test_spend_counts_what_was_sent_upstream_at_the_registry_price(gateway, nanogpt) -> None:
    model = "text-embedding-3-small"
    before = _spend(gateway.url, model)
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": model, "input": [f"spend {uuid.uuid4()}", f"spend {uuid.uuid4()} two"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    tokens = response.json()["usage"]["prompt_tokens"]
    assert tokens > 0
    # model_entry's default price in tests/harness.py: $0.02 per million tokens.
    assert _spend(gateway.url, model) - before == pytest.approx(tokens * 0.02 / 1_000_000)


def test_rules_file_is_plain_yaml_prometheus_loads() -> None:
    # Prometheus' rule_files take the file as it is: one `groups` list, no templating.
    rules = yaml.safe_load(RULES.read_text())
    assert [group["name"] for group in rules["groups"]] == ["embeddings-gateway"]
    names = [rule["alert"] for rule in rules["groups"][0]["rules"]]
    assert len(names) == len(set(names)) == 6
