"""A call's inputs through the model: prompt, tokenise, run in sub-batches, pool, Dense, normalise.

Runs in a worker thread. Inputs are sorted by length and run in sub-batches of at most
RUN_BATCH inputs of similar length, each padded (on the right) only to its own longest input:
that bounds memory whatever `max_batch_size` the route allows, and keeps one long input from
making a whole batch pay for its length. Usage is the model's own count: tokens actually
embedded (prompt and special tokens included, after truncation), per input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.providers.local.pooling import normalize, pool
from app.providers.local.prompts import prepare, prompt_for, prompt_length
from app.providers.local.sessions import Graph
from app.providers.local.spec import ModelSpec

if TYPE_CHECKING:
    import tokenizers

# Sub-batch per onnxruntime run: attention memory grows with batch x length^2, so cap it here
# rather than trust every registry's max_batch_size.
RUN_BATCH = 32


class Stopped(Exception):
    """The awaiting call gave up (timeout, cancellation) or the provider closed."""


def sub_batches(lengths: np.ndarray) -> list[np.ndarray]:
    """Input indices grouped for onnxruntime runs: at most RUN_BATCH each, similar lengths.

    Every input in a run is padded to the run's longest, and attention costs length squared,
    so inputs go longest first and a run ends early where lengths halve: one long input among
    short ones then costs one long row, not RUN_BATCH of them.
    """
    order = np.argsort(-lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        if (
            end == len(order)
            or end - start == RUN_BATCH
            or lengths[order[end]] * 2 < lengths[order[start]]
        ):
            groups.append(order[start:end])
            start = end
    return groups


def encode(
    spec: ModelSpec,
    graph: Graph,
    tokenizer: tokenizers.Tokenizer,
    texts: list[str],
    input_type: str | None,
    stopped: Callable[[], bool],
) -> tuple[np.ndarray, np.ndarray]:
    """The vectors (float32, one row per text, in order) and each text's token count."""
    prompt = prompt_for(spec.prompts, spec.default_prompt, input_type)
    encodings = tokenizer.encode_batch(
        prepare(texts, prompt, spec.lowercase), add_special_tokens=True
    )
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
    # Leading tokens left out of pooling (include_prompt: false); the graph still sees them.
    skip = 0
    if prompt and not spec.include_prompt:
        skip = prompt_length(tokenizer, prompt, spec.lowercase)
    out = np.empty((len(texts), spec.dimensions), dtype=np.float32)
    for rows in sub_batches(lengths):
        if stopped():
            raise Stopped
        out[rows] = _run(spec, graph, [encodings[i] for i in rows], skip)
    return out, lengths


def _run(spec: ModelSpec, graph: Graph, encodings: list[Any], skip: int) -> np.ndarray:
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), spec.pad_id, dtype=graph.int_type)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        types[row, :n] = encoding.type_ids
        mask[row, :n] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in graph.inputs:
        feeds["token_type_ids"] = types
    if "position_ids" in graph.inputs:
        # Right padding: each row's real tokens sit at 0..n-1, as a decoder expects.
        feeds["position_ids"] = np.broadcast_to(
            np.arange(width, dtype=graph.int_type), ids.shape
        ).copy()
    (hidden,) = graph.session.run([graph.output], feeds)
    if skip:
        mask[:, :skip] = 0
    vectors = pool(hidden, mask, spec.pooling)
    for layer in spec.dense:
        vectors = layer(vectors)
    return normalize(vectors) if spec.normalize else vectors
