"""The Batch API and managed keys, on real sockets: the creating key's policy applies to its
batches (models, limits that pace rather than refuse, a budget that runs out mid-batch), its
usage and spend are its own, and the admin API and the console see and cancel every key's
batches."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.batch_support import FAST_BATCHES, results, start, texts_file, wait_for
from tests.console_support import csrf_of, signed_in
from tests.fakes import FakeUpstream
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.keys_support import ADMIN, ADMIN_TOKEN, admin, create_key

UPSTREAM_KEY = "batch-keys-upstream-secret-01"
DIMS = 16
PRICE = 1_000_000.0  # a dollar a token: a budget of a few dollars runs out mid-batch


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream: FakeUpstream) -> Iterator[ThreadedGateway]:
    tmp = tmp_path_factory.mktemp("batch-keys")
    provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    models = {
        "m": model_entry([{"provider": "up", "model": "up-m"}], dimensions=DIMS, price=PRICE),
        "other": model_entry([{"provider": "up", "model": "up-o"}], dimensions=DIMS),
    }
    path = write_registry(tmp / "models.yaml", {"up": provider}, models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        KEYS_DB=str(tmp / "keys.db"),
        BATCH_DB=str(tmp / "batches.db"),
        BATCH_DIR=str(tmp / "files"),
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
        **FAST_BATCHES,
    ) as server:
        yield server


def _client(gateway: ThreadedGateway, **policy: object) -> tuple[OpenAI, str]:
    created = create_key(gateway.url, **policy)
    return OpenAI(base_url=gateway.url + "/v1", api_key=created["key"], max_retries=0), created[
        "id"
    ]


def test_a_budget_that_runs_out_mid_batch_fails_the_remaining_lines(gateway):
    client, key_id = _client(gateway, name="budget", budget_usd=20)
    texts = [[f"budget line {n}"] for n in range(24)]
    batch = wait_for(client, start(client, texts_file("m", texts)).id)
    assert batch.status == "completed"
    out, err = results(client, batch)
    assert len(out) + len(err) == 24
    assert 0 < len(out) < 24 and err
    for entry in err.values():
        assert entry["response"]["status_code"] == 429
        assert entry["response"]["body"]["error"]["code"] == "insufficient_quota"
    counts = batch.request_counts
    assert (counts.completed, counts.failed) == (len(out), len(err))
    spent = admin(gateway.url, "GET", f"/keys/{key_id}").json()["spend_usd"]["total"]
    line_cost = max(e["response"]["body"]["usage"]["prompt_tokens"] for e in out.values()) * 1.0
    # What was spent is what the completed lines cost; lines in flight reserve their estimate,
    # so the budget may refuse a line a little early, and overshoots by at most one line.
    assert spent == pytest.approx(batch.usage.input_tokens * 1.0)
    assert spent <= 20 + line_cost


def test_a_keys_rate_paces_its_batch_instead_of_refusing_it(gateway):
    client, _ = _client(gateway, name="paced", rate_limit_per_second=4)
    began = time.monotonic()
    batch = wait_for(
        client, start(client, texts_file("other", [[f"paced {n}"] for n in range(9)])).id
    )
    assert batch.request_counts.model_dump() == {"total": 9, "completed": 9, "failed": 0}
    assert time.monotonic() - began >= 1.9  # 4 lines a second: the ninth waits two windows


def test_a_model_the_key_may_not_use_fails_validation(gateway):
    client, _ = _client(gateway, name="narrow", models=["other"])
    batch = wait_for(client, start(client, texts_file("m", [["x"], ["y"]])).id)
    assert batch.status == "failed"
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == ("model_not_found", 1, "body.model")


def test_usage_and_spend_are_charged_to_the_creating_key(gateway):
    client, key_id = _client(gateway, name="usage")
    batch = wait_for(client, start(client, texts_file("other", [["u1"], ["u2", "u3"]])).id)
    assert batch.status == "completed"
    report = admin(gateway.url, "GET", "/usage", params={"group_by": "key"}).json()["data"]
    mine = next(row for row in report if row["key"] == key_id)
    assert mine["requests"] == 2
    assert mine["input_tokens"] == batch.usage.input_tokens > 0


def test_the_admin_api_lists_and_cancels_every_keys_batches(gateway, upstream: FakeUpstream):
    upstream.latency = 0.3
    first, first_id = _client(gateway, name="admin-1")
    second, _ = _client(gateway, name="admin-2")
    mine = start(first, texts_file("other", [[f"slow {n}"] for n in range(30)]))
    theirs = wait_for(
        second, start(second, texts_file("other", [["fast"]])).id, ("in_progress", "completed")
    )
    listed = admin(gateway.url, "GET", "/batches", params={"limit": 100}).json()
    by_id = {b["id"]: b for b in listed["data"]}
    assert {mine.id, theirs.id} <= set(by_id)
    assert by_id[mine.id]["owner"] == first_id
    assert listed["has_more"] is False
    cancelled = admin(gateway.url, "POST", f"/batches/{mine.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in (
        "cancelling",
        "cancelled",
    )
    assert wait_for(first, mine.id).status == "cancelled"
    # A client key is not an admin token.
    refused = httpx.get(
        f"{gateway.url}/admin/v1/batches", headers={"authorization": f"Bearer {first.api_key}"}
    )
    assert refused.status_code == 401


def test_the_console_shows_batches_with_their_files_and_cancels_them(gateway, upstream):
    client, key_id = _client(gateway, name="console")
    done = wait_for(client, start(client, texts_file("other", [["console"]])).id)
    assert done.request_counts.completed == 1, results(client, done)
    upstream.latency = 0.3
    running = start(client, texts_file("other", [[f"console {n}"] for n in range(30)]))
    wait_for(client, running.id, ("in_progress",))
    browser = signed_in(gateway.url)
    try:
        page = browser.get("/ui/batches")
        assert page.status_code == 200
        assert done.id in page.text and running.id in page.text and key_id in page.text
        assert f"/ui/files/{done.output_file_id}/content" in page.text
        download = browser.get(f"/ui/files/{done.output_file_id}/content")
        assert download.status_code == 200
        assert download.content == client.files.content(done.output_file_id).content
        csrf = csrf_of(browser, "/ui/batches")
        answer = browser.post(f"/ui/batches/{running.id}/cancel", data={"csrf": csrf})
        assert answer.status_code == 303
        forged = browser.post(f"/ui/batches/{running.id}/cancel", data={"csrf": "forged"})
        assert forged.status_code == 403
    finally:
        browser.close()
    assert wait_for(client, running.id).status == "cancelled"
    assert httpx.get(f"{gateway.url}/ui/batches", headers=ADMIN).status_code in (303, 307)
