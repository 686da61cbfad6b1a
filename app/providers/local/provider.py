"""The local provider: each route's model run in this process, on a thread pool of its own.

Loading, threads and batching
-----------------------------
A route's model (models.py) is checked at start-up (`check_route`: files present, the
pipeline one we run, the width the registry says) and its session and tokenizer are loaded
lazily, on the first call, in a worker thread, then shared by the whole process
(sessions.py). `warm_up()` loads and runs a model ahead of traffic. Inference never runs on the
event loop: each call goes to a small thread pool the provider owns (`workers` threads, each
run using `threads` intra-op threads, so at most threads x workers cores, whatever number of
models the provider serves), shut down in `aclose()`. Concurrent requests' inputs reach one
call through the route's micro-batching; encoder.py runs a call in length-bucketed sub-batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, cast

import numpy as np
from pydantic import ValidationError

from app.config.errors import one_line
from app.config.registry import Model, Route
from app.providers.base import Capabilities, Failure, UpstreamCall, UpstreamError, UpstreamResult
from app.providers.local.builtin import LOCAL_MODELS
from app.providers.local.config import LocalConfig, LocalRouteOptions
from app.providers.local.directory import ModelDirectoryError
from app.providers.local.encoder import Stopped, encode
from app.providers.local.models import resolve
from app.providers.local.prompts import prompt_for
from app.providers.local.sessions import cuda_missing, load_graph, load_tokenizer, verified
from app.providers.local.spec import LocalModelUnavailable, ModelSpec

log = logging.getLogger("app.providers.local")


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
        # Each route's spec, read from its directory once per provider (a registry reload
        # builds new providers, so an edited directory is read again).
        self._specs: dict[tuple[str, str, str], ModelSpec] = {}
        self._specs_lock = threading.Lock()

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        # input_type selects a model's prompts; check_route refuses it where it selects none.
        return Capabilities(token_ids=False, dimensions=False, input_type=True)

    @classmethod
    def check_route(cls, model: Model, route: Route, config: LocalConfig) -> str | None:
        """What makes this route unservable, as `path: message`, or None; run at start-up."""
        where = f"models.{model.id}.routes.{route.index}"
        try:
            options = LocalRouteOptions.model_validate(route.options)
            spec = resolve(route.upstream_model, route.registry_dir, route.options)
        except ValidationError as exc:
            return one_line(exc, lambda loc, _: [f"{where}.options", *loc])
        except ModelDirectoryError as exc:
            return f"{where}.model: {exc}"
        if options.sha256 is not None:
            try:
                verified(spec.graph_path(), options.sha256, str(spec.graph))
            except LocalModelUnavailable as exc:
                return f"{where}.options.sha256: {exc}"
        if model.config.dimensions != spec.dimensions:
            return (
                f"models.{model.id}.dimensions: {spec.name} gives {spec.dimensions}-dimensional "
                f"vectors, not {model.config.dimensions}"
            )
        if model.config.supports_dimensions and route.dimensions_mode != "truncate":
            return (
                f"models.{model.id}.supports_dimensions: {spec.name} cannot shorten its vectors "
                f"(route {route.index} is local); set it to false, or set the route's "
                "dimensions_mode: truncate (for a Matryoshka model)"
            )
        if config.max_seq_length is not None and config.max_seq_length > spec.max_seq_length:
            return (
                f"providers.{route.provider}.max_seq_length: {spec.name} takes at most "
                f"{spec.max_seq_length} tokens"
            )
        if route.input_type is not None and prompt_for(
            spec.prompts, spec.default_prompt, route.input_type
        ) == prompt_for(spec.prompts, spec.default_prompt, None):
            return (
                f"{where}.input_type: {spec.name} has no {route.input_type} prompt of its own "
                "(it would get what an input without input_type gets), so input_type has no "
                "effect here; remove it, or give the route options.prompts"
            )
        if cuda_missing(options.execution_provider):
            log.warning(
                "%s: execution_provider %s, but this onnxruntime has no CUDA (install "
                "onnxruntime-gpu); the model runs on the CPU",
                where,
                options.execution_provider,
            )
        return None

    def _spec(self, call: UpstreamCall) -> ModelSpec:
        """The call's model, read once (in a worker thread: it reads files)."""
        route = call.route
        options = route.options if route is not None else {}
        key = (
            str(route.registry_dir) if route is not None else "",
            call.upstream_model,
            json.dumps(options, sort_keys=True),
        )
        spec = self._specs.get(key)
        if spec is None:
            with self._specs_lock:
                spec = self._specs.get(key)
                if spec is None:
                    try:
                        spec = resolve(
                            call.upstream_model, route.registry_dir if route else None, options
                        )
                    except (ModelDirectoryError, ValidationError) as exc:
                        # check_route rules this out for registries built normally.
                        raise LocalModelUnavailable(str(exc)) from exc
                    self._specs[key] = spec
        return spec

    def _max_length(self, spec: ModelSpec) -> int:
        return min(self._max_seq_length or spec.max_seq_length, spec.max_seq_length)

    async def warm_up(self, models: list[str] | None = None, route: Route | None = None) -> None:
        """Load and run models once now, so the first request does not pay for it: the
        built-in ones named (all by default), or the model of `route`."""
        names = [route.upstream_model] if route else models or sorted(LOCAL_MODELS)
        for name in names:
            call = UpstreamCall(name, ["warm up"], None, None, 0, False, 0, "warm-up", None, route)
            await self._run(call, ["warm up"], timeout=None)

    async def embed(self, call: UpstreamCall) -> UpstreamResult:
        if call.dimensions is not None:
            raise UpstreamError(
                self.name,
                Failure.BAD_REQUEST,
                f"{call.upstream_model} does not support 'dimensions' (route it with "
                "dimensions_mode: truncate)",
            )
        if not all(isinstance(text, str) for text in call.inputs):
            # Routing decodes token IDs for string-only providers; reaching here is a bug.
            raise UpstreamError(
                self.name, Failure.BAD_REQUEST, f"{self.display_name} takes strings only"
            )
        texts = cast(list[str], call.inputs)
        vectors, lengths = await self._run(call, texts, timeout=call.timeout)
        if vectors.shape != (len(texts), call.expected_dims):
            raise UpstreamError(
                self.name,
                Failure.MALFORMED,
                f"{self.display_name} made {vectors.shape[1]}-dimensional vectors, "
                f"expected {call.expected_dims}",
            )
        return UpstreamResult(vectors, int(lengths.sum()), input_tokens=lengths)

    async def _run(
        self, call: UpstreamCall, texts: list[str], timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._closed.is_set():
            raise self._shut_down()
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        name = call.upstream_model
        try:
            async with asyncio.timeout(timeout):
                # Cancelling this await (timeout, client gone) cancels the job if it has not
                # started; `stop` ends a started one after its current sub-batch.
                return await loop.run_in_executor(self._executor, self._embed, call, texts, stop)
        except TimeoutError:
            raise UpstreamError(
                self.name,
                Failure.TIMEOUT,
                f"{self.display_name}: {name} gave no result within {timeout:g}s",
            ) from None
        except LocalModelUnavailable as exc:
            log.error("local model %s unavailable: %s", name, exc)
            raise UpstreamError(
                self.name, Failure.SERVER, f"{self.display_name}: {name} unavailable: {exc}"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed.is_set() and task is not None and not task.cancelling():
                # aclose() cancelled the queued job, not anyone cancelling this task.
                raise self._shut_down() from None
            raise
        except Stopped:
            raise self._shut_down() from None
        except Exception as exc:  # onnxruntime's error classes are not a documented API
            if self._closed.is_set():  # the executor refused the job: aclose() ran meanwhile
                raise self._shut_down() from None
            log.exception("local model %s failed", name)
            raise UpstreamError(
                self.name,
                Failure.SERVER,
                f"{self.display_name}: {name} failed ({type(exc).__name__})",
            ) from None
        finally:
            stop.set()

    def _shut_down(self) -> UpstreamError:
        return UpstreamError(self.name, Failure.CONNECT, f"{self.display_name} is shut down")

    def _embed(
        self, call: UpstreamCall, texts: list[str], stop: threading.Event
    ) -> tuple[np.ndarray, np.ndarray]:
        """Runs in a worker thread: the vectors and each input's tokens."""
        spec = self._spec(call)
        graph = load_graph(spec, self._threads)
        tokenizer = load_tokenizer(spec, self._max_length(spec))
        return encode(
            spec,
            graph,
            tokenizer,
            texts,
            call.input_type,
            lambda: stop.is_set() or self._closed.is_set(),
        )

    async def aclose(self) -> None:
        self._closed.set()
        # Queued jobs are dropped and a running one stops after its sub-batch; not waiting keeps
        # shutdown from blocking the event loop on a long run.
        self._executor.shutdown(wait=False, cancel_futures=True)
