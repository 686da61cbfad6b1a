"""Process-wide onnxruntime sessions and tokenizers, each loaded once and shared.

One session per (graph file, intra-op threads, execution provider) and one tokenizer per
(tokenizer file, max length) for the whole process: every provider instance, every route and
every app built in the process (as tests do, or a registry reload) shares them. A file is known
by its path and its size, inode and mtime, so a file replaced in place is loaded anew. Loading
takes the lock; reads after that do not need it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from app.providers.local.spec import LocalModelUnavailable, ModelSpec

if TYPE_CHECKING:  # imported lazily: a gateway without local models never loads them
    import onnxruntime
    import tokenizers

log = logging.getLogger("app.providers.local")

# How long an idle onnxruntime pool thread spins for more work before it sleeps (measured:
# docs/local-models.md, "Threads").
SPIN_MICROSECONDS = 50
# The inputs the gateway knows how to feed; a graph wanting any other is refused by name.
FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# Token embeddings, by the names exports give them (optimum: last_hidden_state;
# `--library-name sentence_transformers`: token_embeddings beside its own sentence_embedding).
HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")

_load_lock = threading.RLock()  # re-entered: loading a graph hashes its file
_graphs: dict[tuple[Any, ...], Graph] = {}
_tokenizers: dict[tuple[Any, ...], tokenizers.Tokenizer] = {}
_digests: dict[tuple[Any, ...], str] = {}


@dataclass(frozen=True, slots=True)
class Graph:
    """A loaded session and how to feed it: the inputs it declares, their integer type."""

    session: onnxruntime.InferenceSession
    inputs: tuple[str, ...]
    int_type: type[np.signedinteger[Any]]
    output: str


def _file_identity(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns)


def _load_once(cache: dict[Any, Any], key: Any, build: Callable[[], Any]) -> Any:
    """Build a process-wide object once, even when several threads ask for it at once."""
    value = cache.get(key)
    if value is not None:
        return value
    with _load_lock:
        value = cache.get(key)
        if value is None:
            value = cache[key] = build()
    return value


def sha256_of(path: Path) -> str:
    """The file's sha256, hashed once per process per version of the file."""

    def digest() -> str:
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        return hasher.hexdigest()

    return cast(str, _load_once(_digests, _file_identity(path), digest))


def verified(path: Path, expected: str | None, what: str) -> Path:
    # A different package version, a damaged copy or another export would give different
    # vectors silently; refuse it instead.
    if expected is None:
        return path
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise LocalModelUnavailable(f"{what} cannot be read ({type(exc).__name__})") from exc
    if actual != expected:
        raise LocalModelUnavailable(f"{what} has sha256 {actual[:12]}…, expected {expected[:12]}…")
    return path


def execution_providers(choice: str, available: Sequence[str]) -> list[Any]:
    """onnxruntime's providers list for a route's `execution_provider`: CUDA first when asked
    for and installed (onnxruntime-gpu), the CPU always last as the fallback."""
    if choice == "cpu" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    device = int(choice.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]


def cuda_missing(choice: str) -> bool:
    """Whether a route asks for CUDA that this onnxruntime cannot give (so it runs on CPU)."""
    if choice == "cpu":
        return False
    import onnxruntime

    return "CUDAExecutionProvider" not in onnxruntime.get_available_providers()


def load_graph(spec: ModelSpec, threads: int) -> Graph:
    """The process-wide session for this model's graph and thread count, loaded on first use."""
    path = spec.graph_path()
    try:
        identity = _file_identity(path)
    except OSError as exc:
        raise LocalModelUnavailable(f"{spec.graph} cannot be read ({type(exc).__name__})") from exc

    def build() -> Graph:
        import onnxruntime

        verified(path, spec.graph_sha256, str(spec.graph))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # A pool thread that finishes its share of an operator spins briefly for the next one
        # (a run is ~250 operators back to back) instead of sleeping and being woken for each;
        # bounded, so between runs it spins at most SPIN_MICROSECONDS. onnxruntime's default
        # spinning measured slower than none: it kept a core from the event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry(
            "session.intra_op.spin_duration_us", str(SPIN_MICROSECONDS)
        )
        options.log_severity_level = 3
        providers = execution_providers(
            spec.execution_provider, onnxruntime.get_available_providers()
        )
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, undocumented classes
            raise LocalModelUnavailable(
                f"onnxruntime cannot load {spec.graph} ({type(exc).__name__})"
            ) from exc
        return _bind(spec, session)

    # The pin is in the key: a spec expecting other contents never gets this file's session.
    key = (identity, spec.graph_sha256, threads, spec.execution_provider)
    return cast(Graph, _load_once(_graphs, key, build))


def _bind(spec: ModelSpec, session: onnxruntime.InferenceSession) -> Graph:
    """What the graph takes and gives, checked against the model's configuration."""
    inputs = tuple(node.name for node in session.get_inputs())
    unknown = [name for name in inputs if name not in FED_INPUTS]
    if unknown or not {"input_ids", "attention_mask"} <= set(inputs):
        raise LocalModelUnavailable(
            f"{spec.graph} takes inputs {list(inputs)}; the local provider feeds input_ids, "
            "attention_mask and, when declared, token_type_ids and position_ids (export the "
            "transformer with the feature-extraction task, without past key values)"
        )
    int32 = any(node.type == "tensor(int32)" for node in session.get_inputs())
    outputs = {node.name: node for node in session.get_outputs()}
    name = next((n for n in HIDDEN_OUTPUTS if n in outputs), None)
    if name is None:
        raise LocalModelUnavailable(
            f"{spec.graph} gives {list(outputs)}, not the token embeddings "
            f"({' or '.join(HIDDEN_OUTPUTS)})"
        )
    width = outputs[name].shape[-1] if outputs[name].shape else None
    if isinstance(width, int) and width != spec.hidden_size:
        raise LocalModelUnavailable(
            f"{spec.graph} gives {width}-wide token embeddings; the model's pooling "
            f"configuration says {spec.hidden_size}"
        )
    return Graph(session, inputs, np.int32 if int32 else np.int64, name)


def load_tokenizer(spec: ModelSpec, max_length: int) -> tokenizers.Tokenizer:
    """The process-wide tokenizer for this model, truncating at max_length, never padding."""
    path = spec.tokenizer
    try:
        identity = _file_identity(path)
    except OSError as exc:
        raise LocalModelUnavailable(f"{path} cannot be read ({type(exc).__name__})") from exc

    def build() -> tokenizers.Tokenizer:
        from tokenizers import Tokenizer

        verified(path, spec.tokenizer_sha256, path.name)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise LocalModelUnavailable(f"{path} is not a tokenizer ({exc})") from exc
        # tokenizer.json often carries its own truncation and padding (all-MiniLM's: truncate
        # at 128, pad every input to 128); sentence-transformers truncates at the model's
        # max_seq_length instead, and we pad per sub-batch. Truncation keeps room for the
        # special tokens the post-processor adds ([SEP], a decoder's end-of-text).
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()
        return tokenizer

    key = (identity, spec.tokenizer_sha256, max_length)
    return cast("tokenizers.Tokenizer", _load_once(_tokenizers, key, build))
