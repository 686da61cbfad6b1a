"""What running one model takes: its files and the sentence-transformers pipeline around the graph.

A built-in model (builtin.py) and a model directory (directory.py) both become a `ModelSpec`;
everything after that (sessions.py, encoder.py) treats them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

# Pooling modes, in the order sentence-transformers concatenates them when several are on.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


class LocalModelUnavailable(RuntimeError):
    """The model's files are missing, altered or unreadable; the message says which."""


@dataclass(frozen=True, slots=True)
class PackageFile:
    """A data file inside an installed package (the built-in model's weights)."""

    package: str
    file: str

    def path(self) -> Path:
        try:
            return Path(str(resources.files(self.package).joinpath(self.file)))
        except ModuleNotFoundError as exc:
            raise LocalModelUnavailable(f"package {self.package!r} is not installed") from exc

    def __str__(self) -> str:
        return f"{self.package}/{self.file}"


@dataclass(frozen=True, slots=True, eq=False)
class DenseLayer:
    """A sentence-transformers Dense module: activation(x @ weight.T + bias)."""

    weight: np.ndarray  # (out_features, in_features) float32
    bias: np.ndarray | None  # (out_features,)
    activation: str  # "identity" or "tanh"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y: np.ndarray = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return np.tanh(y) if self.activation == "tanh" else y


@dataclass(frozen=True, slots=True, eq=False)
class ModelSpec:
    name: str  # a built-in model's name, or the model directory: what messages call it
    graph: Path | PackageFile
    graph_sha256: str | None
    tokenizer: Path
    tokenizer_sha256: str | None
    hidden_size: int  # the width of the graph's token embeddings
    max_seq_length: int  # tokens, special tokens included, as sentence-transformers truncates
    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True  # False: the prompt's tokens are left out of pooling
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = True
    lowercase: bool = False  # sentence_bert_config.json's do_lower_case
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    execution_provider: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    pad_id: int = 0

    @property
    def dimensions(self) -> int:
        if self.dense:
            return int(self.dense[-1].weight.shape[0])
        return self.hidden_size * len(self.pooling)

    def graph_path(self) -> Path:
        return self.graph.path() if isinstance(self.graph, PackageFile) else self.graph
