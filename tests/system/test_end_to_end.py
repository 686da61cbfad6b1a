"""As a user runs it: the `embeddings-gateway` command, the shipped registry, env-only config."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tests.fakes import FakeUpstream, fake_vector
from tests.harness import ROOT, GatewayProcess

SHIPPED_DIMS = {"text-embedding-3-small": 1536, "voyage-2": 1024, "nugen-flash-embed": 768}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {
        "NANOGPT": FakeUpstream("openai", api_key="e2e-nano", dims=SHIPPED_DIMS),
        "AIML": FakeUpstream("openai", api_key="e2e-aiml", dims=SHIPPED_DIMS),
        "NUGEN": FakeUpstream("nugen", api_key="e2e-nugen", dims=SHIPPED_DIMS),
    }
    for fake in fakes.values():
        fake.start()
    yield fakes
    for fake in fakes.values():
        fake.stop()


@pytest.fixture(scope="module")
def cli_gateway(upstreams) -> Iterator[GatewayProcess]:
    env = {"GATEWAY_API_KEYS": "sk-e2e", "WORKERS": "1", "LOG_LEVEL": "warning"}
    for name, fake in upstreams.items():
        env[f"{name}_BASE_URL"] = fake.base_url
        env[f"{name}_API_KEY"] = f"e2e-{name.lower().replace('nanogpt', 'nano')}"
    with GatewayProcess(env) as process:
        yield process


@pytest.mark.parametrize(
    ("model", "provider"),
    [("text-embedding-3-small", "NANOGPT"), ("voyage-2", "AIML"), ("nugen-flash-embed", "NUGEN")],
)
@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_each_provider_protocol_through_the_cli(cli_gateway, upstreams, model, provider, prefix):
    client = openai.OpenAI(base_url=cli_gateway.url + prefix, api_key="sk-e2e", max_retries=0)
    texts = ["first document", "second document"]
    want = np.array([fake_vector(model, t, SHIPPED_DIMS[model]) for t in texts])
    # Asked explicitly, the SDK hands base64 back undecoded.
    response = client.embeddings.create(model=model, input=texts, encoding_format="base64")
    got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])
    np.testing.assert_array_equal(got, want)
    for encoding in (openai.NOT_GIVEN, "float"):  # the SDK's default is base64, decoded for us
        response = client.embeddings.create(model=model, input=texts, encoding_format=encoding)
        got = np.array([item.embedding for item in response.data])
        np.testing.assert_array_equal(got, want.astype(np.float64))
    assert upstreams[provider].embedding_requests()[-1].json["model"] == model
    assert "AUTH IS OFF" not in cli_gateway.output()


def test_sdk_default_encoding_on_the_shipped_registry(cli_gateway):
    client = openai.OpenAI(base_url=cli_gateway.url + "/v1", api_key="sk-e2e", max_retries=0)
    vector = client.embeddings.create(model="text-embedding-3-small", input="hi").data[0]
    assert len(vector.embedding) == 1536
    listed = {m.id for m in client.models.list()}
    assert {"text-embedding-3-small", "voyage-2", "nugen-flash-embed"} <= listed


def test_a_bad_registry_stops_start_up_with_one_message(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("providers: {}\nmodels: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli"],
        env={"PATH": "/usr/bin:/bin", "MODELS_CONFIG": str(bad), "HOME": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "providers" in result.stderr
    assert "Traceback" not in result.stderr


def test_auth_off_logs_a_loud_warning(upstreams):
    with GatewayProcess({"GATEWAY_API_KEYS": "", "LOG_LEVEL": "info"}) as process:
        client = openai.OpenAI(base_url=process.url + "/v1", api_key="anything", max_retries=0)
        assert client.models.list().data
    assert "AUTH IS OFF" in process.output()


def test_a_fresh_start_with_no_keys_and_no_redis_serves_the_local_model():
    """The README's first command: no keys, no Redis; curl and the SDK still get embeddings."""
    blank = {
        name: ""
        for name in (
            "NANOGPT_API_KEY",
            "AIML_API_KEY",
            "NUGEN_API_KEY",
            "GATEWAY_API_KEYS",
            "REDIS_URL",
        )
    }
    with GatewayProcess({**blank, "LOG_LEVEL": "info"}) as process:
        client = openai.OpenAI(base_url=process.url + "/api/v1", api_key="any", max_retries=0)
        assert [m.id for m in client.models.list()] == ["all-MiniLM-L6-v2"]
        vectors = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"]).data
        assert [len(v.embedding) for v in vectors] == [384, 384]
        with pytest.raises(openai.InternalServerError) as caught:
            client.embeddings.create(model="text-embedding-3-small", input="x")
        assert caught.value.status_code == 503
        assert "NANOGPT_API_KEY" in caught.value.message
        assert "AIML_API_KEY" in caught.value.message
    assert "rate limits are counted per process" in process.output()
