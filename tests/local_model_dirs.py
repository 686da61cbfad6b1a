"""Sentence-transformers model directories made from the files the gateway already ships.

The graph is the built-in model's int8 all-MiniLM-L6-v2 export and the tokenizer its
tokenizer.json (both linked, not copied); the JSON files around them are written here as
sentence-transformers writes them, in its old or new spellings, so one graph can stand for
models that pool, normalise, truncate and prompt differently. bench/ builds its model
directory with this too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.providers.local import LOCAL_MODELS

MINILM = LOCAL_MODELS["all-MiniLM-L6-v2"]
HIDDEN = 384

# modules.json type names: sentence-transformers <= 5.3 and >= 6.0.
OLD_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
NEW_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Dense": "sentence_transformers.base.modules.dense.Dense",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
}
# all-MiniLM-L6-v2's config.json (what Infinity's AutoConfig needs; the graph ignores it).
BERT_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": HIDDEN,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "pad_token_id": 0,
    "layer_norm_eps": 1e-12,
}
TOKENIZER_CONFIG = {
    "do_lower_case": True,
    "tokenizer_class": "BertTokenizer",
    "model_max_length": 512,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


@dataclass
class DirModel:
    """What a directory says, and so what a plain reference must compute."""

    pooling: list[str]  # modes, in sentence-transformers' concatenation order
    normalize: bool = True
    max_seq_length: int = 256
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    include_prompt: bool = True
    new_format: bool = False  # sentence-transformers >= 5.4/6.0 spellings
    graph_at: str = "onnx/model.onnx"
    # A Dense layer after pooling: (weight (out, in), bias (out,)), Tanh.
    dense: tuple[np.ndarray, np.ndarray] | None = None
    # Where max_seq_length is written: sentence_bert_config.json, or only tokenizer_config.json
    # and config.json (sentence-transformers >= 5.4 leaves it out of the former).
    length_in_st_config: bool = True

    @property
    def dimensions(self) -> int:
        return HIDDEN * len(self.pooling) if self.dense is None else len(self.dense[1])


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def write_model_dir(root: Path, model: DirModel) -> Path:
    types = NEW_TYPES if model.new_format else OLD_TYPES
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if model.dense is not None:
        modules.append(("Dense", "2_Dense"))
    if model.normalize:
        modules.append(("Normalize", f"{len(modules)}_Normalize"))
    _write(
        root / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": types[kind]}
            for i, (kind, path) in enumerate(modules)
        ],
    )
    if model.new_format:
        pooling: dict[str, Any] = {
            "embedding_dimension": HIDDEN,
            "pooling_mode": model.pooling[0] if len(model.pooling) == 1 else model.pooling,
        }
    else:
        legacy = {
            "cls": "pooling_mode_cls_token",
            "max": "pooling_mode_max_tokens",
            "mean": "pooling_mode_mean_tokens",
            "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens",
            "lasttoken": "pooling_mode_lasttoken",
        }
        pooling = {"word_embedding_dimension": HIDDEN}
        pooling.update({key: mode in model.pooling for mode, key in legacy.items()})
    pooling["include_prompt"] = model.include_prompt
    _write(root / "1_Pooling" / "config.json", pooling)
    if model.dense is not None:
        from safetensors.numpy import save_file

        weight, bias = model.dense
        _write(
            root / "2_Dense" / "config.json",
            {
                "in_features": weight.shape[1],
                "out_features": weight.shape[0],
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            },
        )
        save_file(
            {"linear.weight": weight.astype(np.float32), "linear.bias": bias.astype(np.float32)},
            str(root / "2_Dense" / "model.safetensors"),
        )
    if model.length_in_st_config:
        _write(
            root / "sentence_bert_config.json",
            {"max_seq_length": model.max_seq_length, "do_lower_case": False},
        )
        _write(root / "config.json", BERT_CONFIG)
        _write(root / "tokenizer_config.json", TOKENIZER_CONFIG)
    else:
        _write(root / "config.json", {**BERT_CONFIG, "max_position_embeddings": 512})
        _write(
            root / "tokenizer_config.json",
            {**TOKENIZER_CONFIG, "model_max_length": model.max_seq_length},
        )
    _write(
        root / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "6.0.0" if model.new_format else "2.0.0"},
            "prompts": model.prompts,
            "default_prompt_name": model.default_prompt,
            "similarity_fn_name": "cosine",
        },
    )
    _link(MINILM.tokenizer, root / "tokenizer.json")
    _link(MINILM.graph_path(), root / model.graph_at)
    return root
