"""Managed keys through the admin API and the request path, on both stores (a real SQLite file,
a real Redis), with a real gateway on 127.0.0.1 and the OpenAI SDK as the client."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from app.core.tokens import count_tokens
from tests.conftest import (
    CLIENT_KEY,
    INTERNAL_TOKEN,
    providers_for,
    redis_settings,
    standard_models,
)
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.keys_support import ADMIN, ADMIN_TOKEN, admin, create_key, embed, wait_until

MODEL = "text-embedding-3-small"
OTHER = "aiml-only"
PRICEY = "pricey"  # $1 per token, so budgets are spent in a few requests


@pytest.fixture(scope="module")
def registry(tmp_path_factory, nanogpt, aiml, nugen):
    models = standard_models()
    models[PRICEY] = model_entry([{"provider": "nanogpt", "model": "pricey"}], price=1_000_000)
    models["keyless"] = model_entry([{"provider": "nokey", "model": "keyless"}])
    providers = providers_for(nanogpt, aiml, nugen)
    providers["nokey"] = {"type": "nanogpt", "base_url": nanogpt.base_url, "api_key": ""}
    path = tmp_path_factory.mktemp("keys") / "models.yaml"
    return write_registry(path, providers, models)


@pytest.fixture(scope="module", params=["sqlite", "redis", "redis-cluster", "redis-sentinel"])
def keyed(request, registry, tmp_path_factory) -> Iterator[ThreadedGateway]:
    settings = {
        "MODELS_CONFIG": str(registry),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RATE_LIMIT_PER_SECOND": 0,
        # Many tests here expect 401s from one IP; the failed-auth throttle has its own tests.
        "AUTH_FAILURES_PER_MINUTE": 0,
    }
    if request.param.startswith("redis"):
        mode = request.param.partition("-")[2] or "standalone"
        tag = uuid.uuid4().hex[:8]
        settings |= {
            **redis_settings(request, mode),
            "KEYS_KEY_PREFIX": f"keys:{tag}:",
            "CACHE_KEY_PREFIX": f"emb:{tag}:",
            "USAGE_KEY_PREFIX": f"usage:{tag}:",
        }
    else:
        settings["KEYS_DB"] = str(tmp_path_factory.mktemp("sqlite") / "keys.db")
    with ThreadedGateway(**settings) as server:
        server.store = request.param  # type: ignore[attr-defined]
        yield server


def sdk(gateway: ThreadedGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


# --- admin auth -------------------------------------------------------------------------------


def test_without_an_admin_token_the_admin_api_is_not_there(gateway):
    response = httpx.get(f"{gateway.url}/admin/v1/keys", headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_admin_calls_need_the_admin_token_and_no_client_key_works(keyed, caplog):
    caplog.set_level(logging.INFO, logger="app.audit")
    managed = create_key(keyed.url, name="a client")["key"]
    for headers in (
        {},
        {"authorization": f"Bearer {CLIENT_KEY}"},
        {"authorization": f"Bearer {INTERNAL_TOKEN}"},
        {"authorization": f"Bearer {managed}"},
        {"authorization": "Bearer wrong-admin-token"},
        {"x-api-key": "wrong-admin-token"},
    ):
        response = httpx.get(f"{keyed.url}/admin/v1/keys", headers=headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert set(error) == {"message", "type", "param", "code"}
    assert admin(keyed.url, "GET", "/keys").status_code == 200
    denied = [r for r in caplog.records if getattr(r, "action", None) == "denied"]
    assert len(denied) == 6
    assert all(managed not in json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert all("wrong-admin-token" not in json.dumps(r.__dict__, default=str) for r in denied)


# --- the lifecycle ----------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_never_again(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    created = create_key(keyed.url, name="ci", team="search", metadata={"owner": "ana"})
    secret = created["key"]
    assert secret.startswith("egw-") and len(secret) >= 4 + 43
    assert created["id"].startswith("key_") and created["team"] == "search"
    assert embed(keyed.url, secret, MODEL).status_code == 200

    key_id = created["id"]
    answers = [
        admin(keyed.url, "GET", "/keys"),
        admin(keyed.url, "GET", f"/keys/{key_id}"),
        admin(keyed.url, "GET", "/keys", params={"team": "search"}),
        admin(keyed.url, "PATCH", f"/keys/{key_id}", json={"name": "ci-2"}),
        admin(keyed.url, "GET", "/usage", params={"group_by": "key"}),
        admin(keyed.url, "DELETE", f"/keys/{key_id}"),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert secret not in response.text
        assert "secret_hash" not in response.text
    listed = answers[2].json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert answers[3].json()["name"] == "ci-2"
    assert answers[5].json()["revoked_at"] is not None
    wait_until(lambda: embed(keyed.url, secret, MODEL).status_code == 401, timeout=2)
    assert all(secret not in record.getMessage() for record in caplog.records)
    assert all(secret not in json.dumps(record.__dict__, default=str) for record in caplog.records)


def test_list_filters_by_team_and_name(keyed):
    team = f"team-{uuid.uuid4().hex[:6]}"
    a = create_key(keyed.url, name="alpha", team=team)["id"]
    b = create_key(keyed.url, name="beta", team=team)["id"]
    create_key(keyed.url, name="alpha", team="elsewhere")
    by_team = admin(keyed.url, "GET", "/keys", params={"team": team}).json()["data"]
    assert sorted(k["id"] for k in by_team) == sorted([a, b])
    both = admin(keyed.url, "GET", "/keys", params={"team": team, "name": "beta"}).json()["data"]
    assert [k["id"] for k in both] == [b]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "colour": "red"}, "colour"),
        ({"rate_limit_per_second": -1}, "rate_limit_per_second"),
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"budget_usd": -0.5}, "budget_usd"),
        ({"budget_period": "week"}, "budget_period"),
        ({"models": ["no-such-model"]}, "models"),
        ({"expires_at": "next tuesday"}, "expires_at"),
    ],
)
def test_bad_input_is_a_clear_openai_400(keyed, body, param):
    for method, path in (("POST", "/keys"), ("PATCH", "/keys/{id}")):
        key_id = create_key(keyed.url)["id"]
        response = admin(keyed.url, method, path.format(id=key_id), json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert "detail" not in response.json()


def test_an_unknown_id_is_a_404(keyed):
    for method, path in (
        ("GET", "/keys/key_nope"),
        ("PATCH", "/keys/key_nope"),
        ("DELETE", "/keys/key_nope"),
        ("POST", "/keys/key_nope/rotate"),
    ):
        response = admin(keyed.url, method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "key_not_found"


def test_every_admin_action_is_an_audit_line_with_the_admin_tokens_id(keyed, caplog):
    caplog.set_level(logging.INFO, logger="app.audit")
    created = create_key(keyed.url, name="audited", rate_limit_per_second=5)
    key_id = created["id"]
    admin(keyed.url, "PATCH", f"/keys/{key_id}", json={"disabled": True})
    rotated = admin(keyed.url, "POST", f"/keys/{key_id}/rotate", json={"grace_seconds": 5})
    admin(keyed.url, "GET", f"/keys/{key_id}")
    admin(keyed.url, "DELETE", f"/keys/{key_id}")
    lines = [r for r in caplog.records if r.name == "app.audit" and r.key_id == key_id]
    assert [r.action for r in lines] == ["create", "update", "rotate", "show", "revoke"]
    from app.api.admin import admin_id

    assert {r.actor for r in lines} == {admin_id(ADMIN_TOKEN)}
    assert lines[0].fields == ["name", "rate_limit_per_second"]
    assert lines[1].fields == ["disabled"]
    for record in caplog.records:
        text = json.dumps(record.__dict__, default=str)
        assert ADMIN_TOKEN not in text
        assert created["key"] not in text and rotated.json()["key"] not in text


# --- policy on the request path ---------------------------------------------------------------


def test_a_disallowed_model_looks_unknown_everywhere(keyed):
    key = create_key(keyed.url, models=[MODEL])["key"]
    client = sdk(keyed, key)
    assert [m.id for m in client.models.list()] == [MODEL]
    detailed = httpx.get(
        f"{keyed.url}/api/v1/embedding-models", headers={"authorization": f"Bearer {key}"}
    ).json()["data"]
    assert [m["id"] for m in detailed] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert len(client.embeddings.create(model=MODEL, input="hi").data) == 1

    answers = {}
    for model in (OTHER, "no-such-model", "keyless"):
        with pytest.raises(openai.NotFoundError) as retrieved:
            client.models.retrieve(model)
        response = embed(keyed.url, key, model)
        answers[model] = (
            retrieved.value.status_code,
            json.loads(retrieved.value.response.text.replace(model, "M")),
            response.status_code,
            json.loads(response.text.replace(model, "M")),
            {h for h in response.headers if h.startswith("x-should")},
        )
    # Allowed-but-unavailable, unknown and disallowed: word for word the same answers.
    assert answers[OTHER] == answers["no-such-model"] == answers["keyless"]
    assert answers[OTHER][2] == 400 and answers[OTHER][3]["error"]["code"] == "model_not_found"

    everything = sdk(keyed, CLIENT_KEY)
    assert {MODEL, OTHER} <= {m.id for m in everything.models.list()}
    assert everything.models.retrieve(OTHER).id == OTHER


def test_an_unavailable_model_tells_the_sdk_not_to_retry(keyed):
    response = embed(keyed.url, CLIENT_KEY, "keyless")
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "false"


def test_disabled_expired_and_revoked_keys_get_a_401(keyed):
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = create_key(keyed.url, expires_at=past)["key"]
    response = embed(keyed.url, expired, MODEL)
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_expired"

    created = create_key(keyed.url)
    assert embed(keyed.url, created["key"], MODEL).status_code == 200
    admin(keyed.url, "PATCH", f"/keys/{created['id']}", json={"disabled": True})
    response = embed(keyed.url, created["key"], MODEL)
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_disabled"
    admin(keyed.url, "PATCH", f"/keys/{created['id']}", json={"disabled": False})
    assert embed(keyed.url, created["key"], MODEL).status_code == 200
    admin(keyed.url, "DELETE", f"/keys/{created['id']}")
    response = embed(keyed.url, created["key"], MODEL)
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_revoked"
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed, created["key"]).embeddings.create(model=MODEL, input="x")


def test_rotate_with_grace_keeps_the_old_secret_for_a_while(keyed):
    created = create_key(keyed.url, name="rotating")
    old = created["key"]
    rotated = admin(keyed.url, "POST", f"/keys/{created['id']}/rotate", json={"grace_seconds": 2})
    assert rotated.status_code == 200
    new = rotated.json()["key"]
    assert new != old and new.startswith("egw-") and rotated.json()["id"] == created["id"]
    assert embed(keyed.url, new, MODEL).status_code == 200
    assert embed(keyed.url, old, MODEL).status_code == 200  # within the grace
    waited = wait_until(lambda: embed(keyed.url, old, MODEL).status_code == 401, timeout=5)
    assert waited >= 1.0  # not before the grace ran out (2 s, less the calls above)
    assert embed(keyed.url, new, MODEL).status_code == 200

    again = admin(keyed.url, "POST", f"/keys/{created['id']}/rotate").json()["key"]
    assert embed(keyed.url, again, MODEL).status_code == 200
    assert embed(keyed.url, new, MODEL).status_code == 401  # no grace: at once here


def test_a_budget_stops_the_key_with_insufficient_quota(keyed, nanogpt):
    created = create_key(keyed.url, budget_usd=10, budget_period="day")
    key = created["key"]
    statuses = []
    for i in range(20):  # each request costs a few dollars at $1 per token
        response = embed(keyed.url, key, PRICEY, f"budget text {i}")
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    body = response.json()["error"]
    assert body["type"] == body["code"] == "insufficient_quota"
    assert response.headers["x-should-retry"] == "false"
    shown = admin(keyed.url, "GET", f"/keys/{created['id']}").json()
    spent = shown["spend_usd"]["day"]
    assert 10 <= spent < 10 + 10  # over by at most the last request admitted
    assert shown["budget_remaining_usd"] == 0
    calls = len(nanogpt.embedding_requests())
    with pytest.raises(openai.RateLimitError) as refused:
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=3).embeddings.create(
            model=PRICEY, input="more"
        )
    assert refused.value.code == "insufficient_quota"
    assert len(nanogpt.embedding_requests()) == calls  # refused before any upstream call


@pytest.mark.parametrize("keyed", ["redis"], indirect=True)  # the embedding cache needs Redis
def test_cache_hits_do_not_count_against_the_budget(keyed):
    created = create_key(keyed.url, budget_usd=1000)
    text = f"cached text {uuid.uuid4().hex}"
    first = embed(keyed.url, created["key"], PRICEY, text)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    spent = admin(keyed.url, "GET", f"/keys/{created['id']}").json()["spend_usd"]["total"]
    assert spent > 0
    for _ in range(3):
        hit = embed(keyed.url, created["key"], PRICEY, text)
        assert hit.headers["x-cache"] == "hit"
    again = admin(keyed.url, "GET", f"/keys/{created['id']}").json()["spend_usd"]["total"]
    assert again == pytest.approx(spent)


@pytest.mark.parametrize("keyed", ["redis"], indirect=True)  # the embedding cache needs Redis
def test_a_cache_hit_still_waits_for_the_keys_own_limits(keyed):
    """The key's check runs beside the cache lookup, not before it: a hit must still be
    refused when the key's limit says no."""
    text = f"limited cached text {uuid.uuid4().hex}"
    tokens = count_tokens([text])[0]
    created = create_key(keyed.url, tokens_per_minute=tokens)  # one request's worth
    first = embed(keyed.url, created["key"], MODEL, text)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    again = embed(keyed.url, created["key"], MODEL, text)  # a hit, over the key's tokens
    assert again.status_code == 429 and "x-cache" not in again.headers
    assert again.json()["error"]["code"] == "rate_limit_exceeded"
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"
    assert embed(keyed.url, CLIENT_KEY, MODEL, text).headers["x-cache"] == "hit"  # it is cached


def test_usage_is_per_key_for_clients_and_by_team_for_the_admin(keyed):
    team = f"team-{uuid.uuid4().hex[:6]}"
    mine = create_key(keyed.url, name="mine", team=team)
    theirs = create_key(keyed.url, name="theirs", team=team)
    for created in (mine, theirs, theirs):
        assert embed(keyed.url, created["key"], MODEL).status_code == 200
    own = httpx.get(
        f"{keyed.url}/v1/usage", headers={"authorization": f"Bearer {mine['key']}"}
    ).json()
    assert own["key_id"] == mine["id"]
    assert {row["key_id"] for row in own["data"]} == {mine["id"]}
    assert own["total"]["requests"] == 1

    by_team = admin(keyed.url, "GET", "/usage", params={"group_by": "team"}).json()["data"]
    assert next(row for row in by_team if row["team"] == team)["requests"] == 3
    by_key = admin(keyed.url, "GET", "/usage", params={"group_by": "key"}).json()["data"]
    row = next(row for row in by_key if row["key"] == theirs["id"])
    assert (row["requests"], row["name"], row["team"]) == (2, "theirs", team)
    bad = admin(keyed.url, "GET", "/usage", params={"start": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"


def test_a_keys_own_request_limit_is_a_429_with_openais_headers(keyed):
    key = create_key(keyed.url, rate_limit_per_second=2)["key"]
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": MODEL, "input": "fast", "encoding_format": "float"}
    with httpx.Client(base_url=keyed.url, headers=headers, timeout=10) as client:
        answers = [client.post("/v1/embeddings", json=body) for _ in range(6)]  # bounded
    statuses = [a.status_code for a in answers]
    assert statuses[:2] == [200, 200] and 429 in statuses
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    refused = answers[statuses.index(429)]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1 and int(refused.headers["retry-after-ms"]) > 0
    # The static key on the same IP is not touched by this key's limit.
    assert embed(keyed.url, CLIENT_KEY, MODEL).status_code == 200
