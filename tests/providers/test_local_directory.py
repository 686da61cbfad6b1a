"""The `local` provider serving sentence-transformers model directories, through a real gateway.

Each directory is the shipped int8 all-MiniLM-L6-v2 graph and tokenizer with the
sentence-transformers files written around them another way (tests/local_model_dirs.py): mean
and Normalize, CLS with prompts, last token without Normalize at a short max_seq_length, max,
and mean-sqrt-len with a Dense layer and the prompt left out of pooling. The gateway's vectors
must match a plain onnxruntime + numpy reference written here (each input run alone, so no
padding, and pooled row by row), on inputs of different lengths in one request.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import openai
import pytest
from tokenizers import Tokenizer

from tests.console_support import signed_in
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.keys_support import ADMIN_TOKEN
from tests.local_model_dirs import MINILM, DirModel, write_model_dir

CLIENT_KEY = "sk-local-dir-test-0001"
RNG = np.random.default_rng(27)
DENSE = (RNG.normal(0, 0.05, (64, 384)), RNG.normal(0, 0.05, 64))
DIRS: dict[str, DirModel] = {
    "dir-mean": DirModel(["mean"]),
    "dir-cls": DirModel(
        ["cls"],
        prompts={"query": "query: ", "passage": "passage: "},
        new_format=True,
        graph_at="model.onnx",
        max_seq_length=128,
        length_in_st_config=False,
    ),
    "dir-last": DirModel(
        ["lasttoken"],
        normalize=False,
        max_seq_length=16,
        new_format=True,
        graph_at="onnx/model_qint8_avx512.onnx",
    ),
    "dir-max": DirModel(["max"]),
    # Two modes, concatenated in sentence-transformers' order (cls before weightedmean).
    "dir-concat": DirModel(["cls", "weightedmean"], new_format=True),
    "dir-dense": DirModel(
        ["mean_sqrt_len_tokens"],
        include_prompt=False,
        prompts={"query": "Represent this question for retrieval: "},
        dense=DENSE,
    ),
}
# Route options each model entry needs beyond its directory.
OPTIONS: dict[str, dict[str, Any]] = {"dir-last": {"onnx_file": "onnx/model_qint8_avx512.onnx"}}
# Lengths from 3 to past 256 tokens; several within a factor of two, so they share a
# sub-batch and are padded to one another.
TEXTS = [
    "Hi there",
    "A man is playing guitar.",
    "Someone plays an instrument on a quiet street corner at night.",
    "The stock market fell today after the central bank raised interest rates again.",
    "Supply chains, interest rates and the weather were discussed at length. " * 3,
    "word " * 300,
]


# --- the reference: onnxruntime and numpy, one input at a time --------------------------------


@functools.cache
def _session() -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(
        str(MINILM.graph_path()), providers=["CPUExecutionProvider"]
    )


@functools.cache
def _tokenizer(max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(MINILM.tokenizer))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def reference(model: DirModel, texts: list[str], prompt: str = "") -> tuple[np.ndarray, list[int]]:
    """Each text's vector as sentence-transformers computes it, and its token count."""
    tokenizer = _tokenizer(model.max_seq_length)
    skip = 0
    if prompt and not model.include_prompt:
        alone = tokenizer.encode(prompt.strip())
        skip = len(alone.ids) - alone.special_tokens_mask[-1]
    vectors, counts = [], []
    for text in texts:
        encoding = tokenizer.encode((prompt + text).strip())
        ids = np.array([encoding.ids], dtype=np.int64)
        (hidden,) = _session().run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids},
        )
        tokens = hidden[0].astype(np.float64)
        pooled = tokens[skip:]
        parts = {
            "mean": pooled.mean(axis=0),
            "cls": tokens[0],
            "max": pooled.max(axis=0),
            "lasttoken": tokens[-1],
            "mean_sqrt_len_tokens": pooled.sum(axis=0) / np.sqrt(len(pooled)),
            "weightedmean": np.average(
                pooled, axis=0, weights=np.arange(skip + 1, len(tokens) + 1)
            ),
        }
        vector = np.concatenate([parts[mode] for mode in model.pooling])
        if model.dense is not None:
            vector = np.tanh(model.dense[0] @ vector + model.dense[1])
        if model.normalize:
            vector = vector / np.linalg.norm(vector)
        vectors.append(vector)
        counts.append(len(encoding.ids))
    return np.stack(vectors), counts


def assert_matches(got: list[list[float]], expected: np.ndarray) -> None:
    vectors = np.asarray(got, dtype=np.float64)
    assert vectors.shape == expected.shape
    for mine, theirs in zip(vectors, expected, strict=True):
        cosine = mine @ theirs / (np.linalg.norm(mine) * np.linalg.norm(theirs))
        assert cosine >= 0.9999
        assert np.linalg.norm(mine) == pytest.approx(np.linalg.norm(theirs), rel=1e-4)


# --- a gateway serving every directory -------------------------------------------------------


def entry(model: str, dims: int, **route: Any) -> dict[str, Any]:
    return model_entry([{"provider": "local", "model": model, **route}], dimensions=dims, price=0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local-dirs")
    for name, model in DIRS.items():
        write_model_dir(root / name, model)
    return root


@pytest.fixture(scope="module")
def gateway(model_dirs) -> Iterator[ThreadedGateway]:
    models = {
        # Relative to the registry file, except one absolute.
        name: entry(
            str(model_dirs / name) if name == "dir-max" else f"./{name}",
            model.dimensions,
            **({"options": OPTIONS[name]} if name in OPTIONS else {}),
        )
        for name, model in DIRS.items()
    }
    # e5's convention, which its repository does not ship: the route gives the prompts.
    models["dir-e5"] = entry(
        "dir-mean",
        384,
        options={
            "prompts": {"query": "query: ", "document": "passage: "},
            "default_prompt": "document",
        },
    )
    models["dir-mrl"] = entry("dir-mean", 384, dimensions_mode="truncate")
    models["dir-mrl"]["supports_dimensions"] = True
    path = write_registry(
        model_dirs / "models.yaml",
        # Small calls, so a request crosses several and concurrent ones merge.
        {"local": {"type": "local", "max_batch_size": 16, "threads": 1}},
        models,
    )
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,  # the console on
        KEYS_DB=str(model_dirs / "keys.db"),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def embed(client: openai.OpenAI, model: str, texts: list[str], **extra: Any) -> Any:
    return client.embeddings.create(model=model, input=texts, encoding_format="float", **extra)


@pytest.mark.parametrize("name", list(DIRS))
def test_a_directory_model_gives_sentence_transformers_vectors_and_token_counts(client, name):
    answer = embed(client, name, TEXTS)
    expected, counts = reference(DIRS[name], TEXTS)
    assert_matches([d.embedding for d in answer.data], expected)
    assert answer.usage.prompt_tokens == sum(counts)
    if name == "dir-last":  # truncated at its max_seq_length of 16
        assert max(counts) == 16


def test_the_sdks_default_base64_gives_the_same_vectors(client):
    floats = embed(client, "dir-cls", TEXTS)
    default = client.embeddings.create(model="dir-cls", input=TEXTS)
    np.testing.assert_array_equal(
        [d.embedding for d in floats.data], [d.embedding for d in default.data]
    )


@pytest.mark.parametrize(
    ("input_type", "prompt"),
    [(None, ""), ("query", "query: "), ("document", "passage: ")],
)
def test_input_type_selects_the_models_prompt_and_prompts_count_as_tokens(
    client, input_type, prompt
):
    extra = {"extra_body": {"input_type": input_type}} if input_type else {}
    answer = embed(client, "dir-cls", TEXTS, **extra)
    expected, counts = reference(DIRS["dir-cls"], TEXTS, prompt)
    assert_matches([d.embedding for d in answer.data], expected)
    assert answer.usage.prompt_tokens == sum(counts)


def test_a_route_gives_prompts_and_a_default_prompt_the_directory_lacks(client):
    for extra, prompt in (({}, "passage: "), ({"extra_body": {"input_type": "query"}}, "query: ")):
        answer = embed(client, "dir-e5", TEXTS[:4], **extra)
        expected, counts = reference(DIRS["dir-mean"], TEXTS[:4], prompt)
        assert_matches([d.embedding for d in answer.data], expected)
        assert answer.usage.prompt_tokens == sum(counts)


def test_a_prompt_left_out_of_pooling_still_counts_as_tokens(client):
    prompt = DIRS["dir-dense"].prompts["query"]
    answer = embed(client, "dir-dense", TEXTS[:5], extra_body={"input_type": "query"})
    expected, counts = reference(DIRS["dir-dense"], TEXTS[:5], prompt)
    assert_matches([d.embedding for d in answer.data], expected)
    assert answer.usage.prompt_tokens == sum(counts)
    # Pooling without the prompt differs from pooling with it.
    with_prompt, _ = reference(DIRS["dir-mean"], TEXTS[:1], prompt)
    assert len(answer.data[0].embedding) == 64 != len(with_prompt[0])


def test_dimensions_shortens_a_matryoshka_route_and_renormalises(client):
    answer = embed(client, "dir-mrl", TEXTS[:3], dimensions=128)
    full, _ = reference(DIRS["dir-mean"], TEXTS[:3])
    short = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert_matches([d.embedding for d in answer.data], short)


def test_concurrent_requests_merge_yet_keep_their_own_prompts_and_counts(client):
    texts = [f"request {i}: {TEXTS[i % 4]}" for i in range(24)]
    kinds = [("query", "query: "), (None, "")]

    def one(i: int) -> tuple[int, Any]:
        input_type = kinds[i % 2][0]
        extra = {"extra_body": {"input_type": input_type}} if input_type else {}
        return i, embed(client, "dir-cls", [texts[i]], **extra)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(one, range(len(texts))))
    for i, answer in answers:
        expected, counts = reference(DIRS["dir-cls"], [texts[i]], kinds[i % 2][1])
        assert_matches([answer.data[0].embedding], expected)
        assert answer.usage.prompt_tokens == counts[0]


def test_directory_models_are_listed_like_any_other(gateway):
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    listed = httpx.get(f"{gateway.url}/v1/models", headers=headers, timeout=10).json()
    assert set(DIRS) <= {m["id"] for m in listed["data"]}
    details = httpx.get(f"{gateway.url}/v1/embedding-models", headers=headers, timeout=10)
    by_id = {m["id"]: m for m in details.json()["data"]}
    assert by_id["dir-dense"]["dimensions"] == 64
    assert by_id["dir-mrl"]["supports_dimensions"] is True
    assert by_id["dir-last"]["max_tokens"] == 8191  # the registry entry's


def test_the_console_shows_directory_models_and_their_routes(gateway, model_dirs):
    console = signed_in(gateway.url)
    try:
        routes = console.get("/ui/routes")
    finally:
        console.close()
    assert routes.status_code == 200
    for name in DIRS:
        assert name in routes.text
    assert "./dir-dense" in routes.text and str(model_dirs / "dir-max") in routes.text


def test_one_session_serves_every_directory_linking_the_same_graph(gateway, client):
    from app.providers.local import sessions

    embed(client, "dir-max", ["warm"])
    graph = str(MINILM.graph_path().resolve())
    # (file, sha256 pin, threads, execution provider): unpinned, 1 thread, CPU, whatever the
    # directory or the name the graph has in it.
    keys = {key for key in sessions._graphs if key[0][0] == graph and key[1] is None}
    assert keys == {(keys and next(iter(keys))[0], None, 1, "cpu")}
