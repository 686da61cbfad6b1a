"""The `local` provider: sentence-embedding models run in this process with onnxruntime.

A route names a built-in model (builtin.py: all-MiniLM-L6-v2, shipped with the gateway) or a
sentence-transformers model directory with an ONNX export (directory.py), which the user
brings; nothing is downloaded, ever. The modules, one idea each:

- config.py     the provider entry (threads, workers) and a route's `options`
- models.py     which model a route runs: built in, or a directory, with its options
- directory.py  reading a sentence-transformers directory into a `ModelSpec` (spec.py)
- sessions.py   onnxruntime sessions and tokenizers, loaded once per process and shared
- prompts.py    the prompt `input_type` selects
- encoder.py    a call's inputs through tokenizer, graph (length-bucketed sub-batches), pooling
- pooling.py    sentence-transformers' pooling modes and Normalize, in numpy
- provider.py   the provider: start-up checks, its thread pool, timeouts and shutdown

docs/local-models.md is the user's guide.
"""

from app.providers.local.builtin import LOCAL_MODELS
from app.providers.local.config import LocalConfig, LocalRouteOptions
from app.providers.local.directory import ModelDirectoryError
from app.providers.local.encoder import RUN_BATCH, sub_batches
from app.providers.local.provider import LocalProvider
from app.providers.local.sessions import SPIN_MICROSECONDS, load_graph, load_tokenizer
from app.providers.local.spec import LocalModelUnavailable, ModelSpec

__all__ = [
    "LOCAL_MODELS",
    "RUN_BATCH",
    "SPIN_MICROSECONDS",
    "LocalConfig",
    "LocalModelUnavailable",
    "LocalProvider",
    "LocalRouteOptions",
    "ModelDirectoryError",
    "ModelSpec",
    "load_graph",
    "load_tokenizer",
    "sub_batches",
]
