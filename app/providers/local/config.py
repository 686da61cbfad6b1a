"""What the registry says to the local provider: the provider entry, and a route's `options`.

The provider entry sets what is shared by every model it runs (threads, workers: the cores it
may use). A route's `options` say how to run that route's model (which ONNX file, its pinned
sha256, prompts, the execution provider); they are part of the model's registry entry, so
changing them changes the model's cache fingerprint and no vector made the old way is served.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.config.registry import ProviderConfig


class LocalConfig(ProviderConfig):
    type: Literal["local"]
    route_options: ClassVar[bool] = True  # routes may carry LocalRouteOptions
    # Intra-op threads per inference run, and runs at once: threads x workers is the most
    # cores the model uses. One run at a time on both cores of a small box, fed merged batches
    # (micro-batching), serves more than two single-threaded runs: those and the event loop
    # would be three busy threads on two cores (docs/local-models.md, "Threads").
    threads: int = Field(default=2, ge=1, le=64)
    workers: int = Field(default=1, ge=1, le=64)
    # Unset, one call in flight per worker: more would only queue in the executor, where
    # concurrent requests no longer merge into one run.
    max_inflight_calls: int = Field(default=1, ge=1, le=1024)
    # A model on the CPU embeds thousands of tokens a second, not an API's hundreds of
    # thousands: a call's budget grows by a second per 1,000 tokens (so a call of 2,048
    # sentences gets about 40 s more than the base), or it would time out while running.
    timeout_per_1k_tokens_seconds: float = Field(default=1.0, ge=0)
    # Truncate inputs at this many tokens; unset means each model's own limit.
    max_seq_length: int | None = Field(default=None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _one_call_per_worker(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_inflight_calls") is None:
            return {**data, "max_inflight_calls": data.get("workers", 1)}
        return data


class LocalRouteOptions(BaseModel):
    """A local route's `options` (docs/local-models.md, "Route options")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The graph to run, relative to the model directory (e.g. onnx/model_qint8_avx512.onnx);
    # unset: onnx/model.onnx, else model.onnx. Built-in models have their files pinned.
    onnx_file: str | None = Field(default=None, min_length=1)
    # The graph file's sha256, checked at start-up and before loading: a changed file is
    # refused rather than silently giving other vectors.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Prompts by name, over those of the model's config_sentence_transformers.json: `query`
    # and `document` (or `passage`) are what a request's input_type selects.
    prompts: dict[str, str] = Field(default_factory=dict)
    # The prompt for requests that name no input_type; `null` cancels the model's own default.
    default_prompt: str | None = None
    # `cuda` (or `cuda:N`) runs on onnxruntime-gpu's CUDA execution provider when it is
    # installed, and on the CPU otherwise (with a warning at start-up).
    execution_provider: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$")

    @property
    def sets_default_prompt(self) -> bool:
        """Whether the route says which prompt is the default (`null` included)."""
        return "default_prompt" in self.model_fields_set
