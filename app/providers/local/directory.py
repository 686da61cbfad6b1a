"""A sentence-transformers model directory, read as sentence-transformers would read it.

The layout is what sentence-transformers saves and Hugging Face model repositories ship (the
user brings it; nothing is ever downloaded): `modules.json` lists the pipeline, Transformer
then Pooling, any Dense layers, and Normalize if the vectors are unit length. The Transformer
is the ONNX graph (`onnx/model.onnx`, else `model.onnx`, or the route's `onnx_file`) with
`tokenizer.json`; its maximum length comes from `sentence_bert_config.json`, else
`tokenizer_config.json` capped by `config.json`. Pooling is `1_Pooling/config.json` in either
format (the `pooling_mode_*` booleans of sentence-transformers <= 5.3, or `pooling_mode` of
5.4+). Prompts come from `config_sentence_transformers.json`. Module type names are accepted in
all three spellings sentence-transformers has used; anything else is refused by name, since a
pipeline we would run differently gives worse vectors with no error at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.providers.local.config import LocalRouteOptions
from app.providers.local.spec import POOLING_MODES, DenseLayer, ModelSpec


class ModelDirectoryError(Exception):
    """A directory the local provider cannot serve; the message names the file and why."""


_TYPES = {
    "Transformer": {
        "sentence_transformers.models.Transformer",
        "sentence_transformers.base.modules.transformer.Transformer",
    },
    "Pooling": {
        "sentence_transformers.models.Pooling",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    },
    "Dense": {
        "sentence_transformers.models.Dense",
        "sentence_transformers.base.modules.dense.Dense",
    },
    "Normalize": {
        "sentence_transformers.models.Normalize",
        "sentence_transformers.sentence_transformer.modules.normalize.Normalize",
        "sentence_transformers.base.modules.normalize.Normalize",
    },
}
# Legacy pooling keys, in concatenation order.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}
_GRAPHS = ("onnx/model.onnx", "model.onnx")
# tokenizer_config.json's "no limit" (1e30) and the like are not a length.
_NO_LIMIT = 1_000_000


def load_directory(root: Path, options: LocalRouteOptions) -> ModelSpec:
    """The model in `root`, with the route's options applied; raises ModelDirectoryError."""
    if not root.is_dir():
        raise ModelDirectoryError(f"{root} is not a directory")
    modules = _modules(root)
    kinds = [kind for kind, _ in modules]
    shape_ok = (
        len(kinds) >= 2
        and kinds[0] == "Transformer"
        and kinds[1] == "Pooling"
        and all(kind == "Dense" for kind in kinds[2:-1])
        and kinds[-1] in ("Dense", "Normalize", "Pooling")
    )
    if not shape_ok:
        raise ModelDirectoryError(
            f"{root / 'modules.json'}: the pipeline is {kinds}; the local provider runs "
            "Transformer, Pooling, any Dense layers, then Normalize or not"
        )
    transformer = root / modules[0][1]
    pooling, hidden, include_prompt = _pooling(root / modules[1][1] / "config.json")
    width = hidden * len(pooling)
    dense = []
    for kind, path in modules[2:]:
        if kind == "Dense":
            dense.append(_dense(root / path, width))
            width = int(dense[-1].weight.shape[0])
        else:
            _check_normalize(root / path)
    config = _json(transformer / "config.json", required=False)
    if isinstance(config.get("hidden_size"), int) and config["hidden_size"] != hidden:
        raise ModelDirectoryError(
            f"{root / modules[1][1] / 'config.json'}: pooling of width {hidden}, but "
            f"{transformer / 'config.json'} says hidden_size {config['hidden_size']}"
        )
    max_seq_length, lowercase = _transformer(transformer, config)
    prompts, default_prompt = _prompts(root, options)
    tokenizer = _required(transformer / "tokenizer.json", "the tokenizer")
    return ModelSpec(
        name=str(root),
        graph=_graph(root, options),
        graph_sha256=options.sha256,
        tokenizer=tokenizer,
        tokenizer_sha256=None,
        hidden_size=hidden,
        max_seq_length=max_seq_length,
        pooling=pooling,
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=kinds[-1] == "Normalize",
        lowercase=lowercase,
        prompts=prompts,
        default_prompt=default_prompt,
        execution_provider=options.execution_provider,
        pad_id=_pad_id(tokenizer, config),
    )


def apply_prompt_options(
    prompts: dict[str, str], default: str | None, options: LocalRouteOptions, where: str
) -> tuple[dict[str, str], str | None]:
    """The model's prompts with the route's over them, and the default prompt's name."""
    merged = {**prompts, **options.prompts}
    if options.sets_default_prompt:
        default = options.default_prompt
    if default is not None and default not in merged:
        raise ModelDirectoryError(
            f"{where}: the default prompt {default!r} is not among the prompts "
            f"({', '.join(sorted(merged)) or 'none'})"
        )
    return merged, default


def _json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelDirectoryError(f"{path} is missing")
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelDirectoryError(f"{path} cannot be read as JSON ({type(exc).__name__})") from exc
    if not isinstance(loaded, dict | list):
        raise ModelDirectoryError(f"{path}: expected a JSON object")
    return loaded if isinstance(loaded, dict) else {"": loaded}


def _required(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelDirectoryError(f"{path} is missing ({what})")
    with path.open("rb") as handle:
        if handle.read(24).startswith(b"version https://git-lfs"):
            raise ModelDirectoryError(f"{path} is a Git LFS pointer, not {what} (git lfs pull)")
    return path


def _modules(root: Path) -> list[tuple[str, str]]:
    """modules.json as (kind, path) pairs, in pipeline order."""
    entries = _json(root / "modules.json").get("")
    if not isinstance(entries, list) or not entries:
        raise ModelDirectoryError(f"{root / 'modules.json'}: expected a list of modules")
    found = []
    for entry in sorted(entries, key=lambda e: e.get("idx", 0) if isinstance(e, dict) else 0):
        if not isinstance(entry, dict):
            raise ModelDirectoryError(f"{root / 'modules.json'}: expected a list of objects")
        type_name, path = str(entry.get("type", "")), str(entry.get("path", ""))
        kind = next((k for k, names in _TYPES.items() if type_name in names), None)
        if kind is None:
            raise ModelDirectoryError(
                f"{root / 'modules.json'}: module {entry.get('idx')} ({path or '.'}) is "
                f"{type_name!r}, which the local provider does not run"
            )
        found.append((kind, path))
    return found


def _pooling(path: Path) -> tuple[tuple[str, ...], int, bool]:
    config = _json(path)
    hidden = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if not isinstance(hidden, int) or hidden < 1:
        raise ModelDirectoryError(f"{path}: no word_embedding_dimension")
    mode = config.get("pooling_mode")
    if mode is not None:  # sentence-transformers >= 5.4
        modes = tuple([mode] if isinstance(mode, str) else mode if isinstance(mode, list) else [])
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise ModelDirectoryError(
                f"{path}: pooling_mode {mode!r}; known: {', '.join(POOLING_MODES)}"
            )
    else:  # every key present and true, in concatenation order; none is mean
        modes = tuple(name for key, name in _LEGACY_POOLING.items() if config.get(key)) or ("mean",)
    return modes, hidden, bool(config.get("include_prompt", True))


def _dense(directory: Path, width: int) -> DenseLayer:
    config = _json(directory / "config.json")
    activation = _ACTIVATIONS.get(str(config.get("activation_function")))
    if activation is None:
        raise ModelDirectoryError(
            f"{directory / 'config.json'}: activation {config.get('activation_function')!r}; "
            f"the local provider implements {', '.join(_ACTIVATIONS)}"
        )
    if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != (
        "sentence_embedding"
    ):
        raise ModelDirectoryError(f"{directory / 'config.json'}: a Dense the provider cannot run")
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise ModelDirectoryError(
            f"{weights_path} is missing (weights in pytorch_model.bin would need torch; "
            "save them as safetensors)"
        )
    from safetensors.numpy import load_file

    try:
        weights = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelDirectoryError(f"{weights_path} cannot be read ({exc})") from exc
    weight = weights.get("linear.weight")
    bias = weights.get("linear.bias") if config.get("bias", True) else None
    expected = (config.get("out_features"), config.get("in_features", width))
    if weight is None or weight.shape != expected or expected[1] != width:
        raise ModelDirectoryError(
            f"{weights_path}: linear.weight should be {expected[0]} x {width}"
        )
    return DenseLayer(
        weight.astype(np.float32),
        None if bias is None else bias.astype(np.float32),
        activation,
    )


def _check_normalize(directory: Path) -> None:
    # sentence-transformers >= 6 may write {"module_input_name": ...}: only the sentence
    # embedding's Normalize is this one (token_embeddings would be a multi-vector model).
    config = _json(directory / "config.json", required=False)
    if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ModelDirectoryError(f"{directory / 'config.json'}: normalises token embeddings")


def _transformer(directory: Path, config: dict[str, Any]) -> tuple[int, bool]:
    """The maximum length in tokens, and whether inputs are lower-cased first."""
    st_config: dict[str, Any] = {}
    for name in _TRANSFORMER_CONFIGS:
        st_config = _json(directory / name, required=False)
        if st_config:
            break
    length = st_config.get("max_seq_length")
    if not isinstance(length, int):
        tokenizer_max = _json(directory / "tokenizer_config.json", required=False).get(
            "model_max_length"
        )
        positions = config.get("max_position_embeddings")
        limits = [
            int(v)
            for v in (tokenizer_max, positions)
            if isinstance(v, int | float) and 1 < v < _NO_LIMIT
        ]
        if not limits:
            raise ModelDirectoryError(
                f"{directory}: no maximum length (sentence_bert_config.json's max_seq_length, "
                "tokenizer_config.json's model_max_length or config.json's "
                "max_position_embeddings)"
            )
        length = min(limits)
    if length < 2:
        raise ModelDirectoryError(f"{directory}: max_seq_length {length} is too short")
    return length, bool(st_config.get("do_lower_case", False))


def _prompts(root: Path, options: LocalRouteOptions) -> tuple[dict[str, str], str | None]:
    path = root / "config_sentence_transformers.json"
    config = _json(path, required=False)
    model_type = config.get("model_type", "SentenceTransformer")
    if model_type != "SentenceTransformer":
        raise ModelDirectoryError(f"{path}: a {model_type}, not a SentenceTransformer")
    prompts = config.get("prompts") or {}
    default = config.get("default_prompt_name")
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModelDirectoryError(f"{path}: prompts must map names to strings")
    return apply_prompt_options(
        {str(k): v for k, v in prompts.items()},
        default if isinstance(default, str) else None,
        options,
        str(path),
    )


def _graph(root: Path, options: LocalRouteOptions) -> Path:
    if options.onnx_file is not None:
        return _required(root / options.onnx_file, "the ONNX graph named by options.onnx_file")
    for name in _GRAPHS:
        if (root / name).is_file():
            return _required(root / name, "the ONNX graph")
    raise ModelDirectoryError(
        f"{root} has no ONNX graph: neither {' nor '.join(_GRAPHS)} exists (options.onnx_file "
        "names another)"
    )


def _pad_id(tokenizer: Path, config: dict[str, Any]) -> int:
    # Padded positions are masked out, so any id works; the model's own pad id is the tidy one.
    try:
        padding = json.loads(tokenizer.read_text(encoding="utf-8")).get("padding") or {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelDirectoryError(f"{tokenizer} cannot be read as JSON") from exc
    for value in (padding.get("pad_id"), config.get("pad_token_id")):
        if isinstance(value, int) and value >= 0:
            return value
    return 0
