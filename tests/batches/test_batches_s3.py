"""The Batch API with its files in S3: moto's standalone server speaks S3 on a real socket (no S3
server installs here), and the gateway reaches it through obstore as it would AWS or MinIO."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer
from openai import OpenAI

from tests.batch_support import FAST_BATCHES, results, start, texts_file, upload, wait_for
from tests.fakes import FakeUpstream, fake_vector
from tests.harness import ThreadedGateway, free_port, model_entry, write_registry

UPSTREAM_KEY = "s3-upstream-secret-01"
KEY = "sk-s3-test-key-0001"
BUCKET = "gateway-batches"
PREFIX = "team-a/batches"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket(s3_url: str):  # type: ignore[no-untyped-def]
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=BUCKET)
    return s3


def test_files_and_results_live_in_the_bucket(tmp_path, s3_url: str, bucket) -> None:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as upstream:
        provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
        models = {"m": model_entry([{"provider": "up", "model": "up-m"}], dimensions=16)}
        registry = write_registry(tmp_path / "models.yaml", {"up": provider}, models)
        with ThreadedGateway(
            MODELS_CONFIG=str(registry),
            GATEWAY_API_KEYS=KEY,
            BATCH_DB=str(tmp_path / "batches.db"),
            BATCH_STORAGE="s3",
            BATCH_S3_BUCKET=BUCKET,
            BATCH_S3_PREFIX=PREFIX,
            BATCH_S3_ENDPOINT_URL=s3_url,
            BATCH_S3_REGION="us-east-1",
            RATE_LIMIT_PER_SECOND=0,
            **CREDENTIALS,
            **FAST_BATCHES,
        ) as gateway:
            client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
            texts = [[f"in the bucket {n}"] for n in range(10)]
            content = texts_file("m", texts)
            batch = wait_for(client, start(client, content).id)
            assert batch.status == "completed"
            out, err = results(client, batch)
            assert err == {} and len(out) == 10
            for n in range(10):
                vector = out[f"req-{n}"]["response"]["body"]["data"][0]["embedding"]
                assert vector == fake_vector("up-m", f"in the bucket {n}", 16).tolist()
            assert client.files.content(batch.input_file_id).content == content
            keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]}
            assert f"{PREFIX}/files/{batch.input_file_id}" in keys
            parts = [k for k in keys if k.startswith(f"{PREFIX}/batches/{batch.id}/")]
            assert len(parts) == 3  # 10 lines in chunks of 4: three parts of output lines
            # A file over a multipart part (5 MB) goes up in parts and comes back whole.
            big = texts_file("m", [["x" * 1000]] * 6000)
            big_id = upload(client, big)
            assert client.files.content(big_id).content == big
            client.files.delete(big_id)
            keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]}
            assert f"{PREFIX}/files/{big_id}" not in keys
