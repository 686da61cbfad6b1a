"""The model a local route runs: a built-in model by name, or a directory, with its options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.providers.local.builtin import LOCAL_MODELS
from app.providers.local.config import LocalRouteOptions
from app.providers.local.directory import ModelDirectoryError, apply_prompt_options, load_directory
from app.providers.local.spec import ModelSpec


def model_directory(model: str, registry_dir: Path | None) -> Path:
    """Where a route's `model` points: absolute, or relative to the registry file."""
    path = Path(model).expanduser()
    return path if path.is_absolute() else (registry_dir or Path.cwd()) / path


def resolve(model: str, registry_dir: Path | None, options: Mapping[str, Any]) -> ModelSpec:
    """The spec to run; raises ModelDirectoryError (pydantic's ValidationError for options
    that are not LocalRouteOptions, which check_route reports first)."""
    parsed = LocalRouteOptions.model_validate(options)
    builtin = LOCAL_MODELS.get(model)
    if builtin is None:
        directory = model_directory(model, registry_dir)
        if not directory.exists():
            raise ModelDirectoryError(
                f"unknown local model {model!r}: not a built-in model (known: "
                f"{', '.join(sorted(LOCAL_MODELS))}) nor a directory ({directory} does not exist)"
            )
        return load_directory(directory, parsed)
    if parsed.onnx_file is not None or parsed.sha256 is not None:
        raise ModelDirectoryError(
            f"{model} is built in, with its files pinned: options.onnx_file and options.sha256 "
            "are for model directories"
        )
    prompts, default = apply_prompt_options(
        dict(builtin.prompts), builtin.default_prompt, parsed, "options.default_prompt"
    )
    return dataclasses.replace(
        builtin,
        prompts=prompts,
        default_prompt=default,
        execution_provider=parsed.execution_provider,
    )
