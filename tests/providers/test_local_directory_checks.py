"""A local model directory is checked at start-up: what is missing or unsupported stops the
gateway, and `check-config` names the registry entry and the file. Also the route options'
plumbing that cannot run here (CUDA) and the example registry in config/examples/local/."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config.registry import RegistryError
from app.providers import build_providers
from app.providers.local import LocalProvider, load_graph
from app.providers.local.models import resolve
from app.providers.local.sessions import execution_providers, sha256_of
from app.runtime.build import read_registry
from tests.harness import ROOT, model_entry, write_registry
from tests.local_model_dirs import MINILM, DirModel, write_model_dir
from tests.server.test_operations import check_config

GRAPH_SHA = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def registry(tmp_path: Path, route: dict[str, Any], **model: Any) -> Path:
    entry = model_entry([{"provider": "local", **route}], dimensions=384, price=0)
    entry.update(model)
    providers: dict[str, Any] = {"local": {"type": "local"}}
    providers["up"] = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k"}
    return write_registry(tmp_path / "models.yaml", providers, {"m": entry})


def start_up_error(path: Path) -> str:
    with pytest.raises(RegistryError) as caught:
        build_providers(read_registry(path, {}))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def _remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def _edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return edit


_DENSE = "sentence_transformers.models.Dense"


def _gelu_dense(root: Path) -> None:
    modules = json.loads((root / "modules.json").read_text())
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": _DENSE}
    (root / "modules.json").write_text(json.dumps([*modules[:2], dense, {**modules[2], "idx": 3}]))
    (root / "2_Dense").mkdir()
    activation = {"activation_function": "torch.nn.modules.activation.GELU"}
    (root / "2_Dense" / "config.json").write_text(json.dumps(activation))


def _lfs_pointer(root: Path) -> None:
    (root / "onnx" / "model.onnx").unlink()
    (root / "onnx" / "model.onnx").write_text("version https://git-lfs.github.com/spec/v1\n")


BROKEN = {
    "no tokenizer": (_remove("tokenizer.json"), "dir/tokenizer.json is missing (the tokenizer)"),
    "no graph": (_remove("onnx/model.onnx"), "dir has no ONNX graph: neither onnx/model.onnx"),
    "no modules": (_remove("modules.json"), "dir/modules.json is missing"),
    "an lfs pointer": (_lfs_pointer, "model.onnx is a Git LFS pointer, not the ONNX graph"),
    "a custom module": (
        _edit("modules.json", lambda m: [*m[:2], {**m[2], "type": "token_pooling.TokenPooling"}]),
        "module 2 (2_Normalize) is 'token_pooling.TokenPooling', which the local provider "
        "does not run",
    ),
    "an unknown pooling mode": (
        _edit("1_Pooling/config.json", lambda c: {"embedding_dimension": 384, "pooling_mode": "x"}),
        "dir/1_Pooling/config.json: pooling_mode 'x'; known: cls, max, mean",
    ),
    "pooling wider than the model": (
        _edit("1_Pooling/config.json", lambda c: {**c, "word_embedding_dimension": 768}),
        "pooling of width 768, but",
    ),
    "a Dense after Normalize": (
        _edit("modules.json", lambda m: [*m, {**m[1], "idx": 3, "type": _DENSE}]),
        "the pipeline is ['Transformer', 'Pooling', 'Normalize', 'Dense']",
    ),
    "a GELU Dense": (_gelu_dense, "activation 'torch.nn.modules.activation.GELU'; the local"),
    "a cross-encoder": (
        _edit("config_sentence_transformers.json", lambda c: {**c, "model_type": "CrossEncoder"}),
        "a CrossEncoder, not a SentenceTransformer",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_directory_stops_start_up_naming_entry_and_file(tmp_path, case):
    break_it, expected = BROKEN[case]
    root = write_model_dir(tmp_path / "dir", DirModel(["mean"]))
    break_it(root)
    message = start_up_error(registry(tmp_path, {"model": "dir"}))
    assert "models.m.routes.0.model: " in message
    assert expected.replace("dir/", f"{root}/").replace("dir has", f"{root} has") in message


@pytest.mark.parametrize(
    ("route", "model", "expected"),
    [
        (
            {},
            {"dimensions": 768},
            "models.m.dimensions: {dir} gives 384-dimensional vectors, not 768",
        ),
        ({"options": {"onnx": "x"}}, {}, "models.m.routes.0.options.onnx: Extra inputs"),
        ({"options": {"execution_provider": "gpu"}}, {}, "options.execution_provider: String"),
        (
            {"options": {"default_prompt": "query"}},
            {},
            "config_sentence_transformers.json: the default prompt 'query' is not among the "
            "prompts (none)",
        ),
        (
            {"options": {"sha256": "0" * 64}},
            {},
            "models.m.routes.0.options.sha256: {dir}/onnx/model.onnx has sha256 8199be6f699a…",
        ),
        (
            {"options": {"onnx_file": "onnx/model_O4.onnx"}},
            {},
            "{dir}/onnx/model_O4.onnx is missing (the ONNX graph named by options.onnx_file)",
        ),
        (
            {"input_type": "query"},
            {},
            "models.m.routes.0.input_type: {dir} has no query prompt of its own",
        ),
        (
            {"model": "all-MiniLM-L6-v2", "options": {"onnx_file": "model.onnx"}},
            {},
            "all-MiniLM-L6-v2 is built in, with its files pinned",
        ),
        (
            {"model": "missing-dir"},
            {},
            "unknown local model 'missing-dir': not a built-in model (known: all-MiniLM-L6-v2) "
            "nor a directory ({tmp}/missing-dir does not exist)",
        ),
        (
            {"provider": "up", "model": "text-embedding-3-small", "options": {"x": 1}},
            {},
            "models.m.routes.0.options: openai routes take no options",
        ),
    ],
)
def test_a_bad_route_names_the_field(tmp_path, route, model, expected):
    root = write_model_dir(tmp_path / "dir", DirModel(["mean"]))
    path = registry(tmp_path, {"model": "dir", **route}, **model)
    assert expected.format(dir=root, tmp=tmp_path) in start_up_error(path)


def test_a_pinned_graph_and_route_prompts_pass(tmp_path):
    assert sha256_of(MINILM.graph_path()) == GRAPH_SHA
    write_model_dir(tmp_path / "dir", DirModel(["mean"]))
    route = {
        "model": "dir",
        "input_type": "query",
        "options": {"sha256": GRAPH_SHA, "prompts": {"query": "query: "}},
    }
    providers = build_providers(read_registry(registry(tmp_path, route), {}))
    asyncio.run(providers["local"].aclose())


def test_check_config_names_the_entry_and_the_missing_file(tmp_path):
    root = write_model_dir(tmp_path / "dir", DirModel(["mean"]))
    (root / "tokenizer.json").unlink()
    path = registry(tmp_path, {"model": "dir"})
    result = check_config({"PATH": "/usr/bin:/bin", "MODELS_CONFIG": str(path)}, ROOT)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "Traceback" not in result.stderr
    assert f"{path}: models.m.routes.0.model: {root}/tokenizer.json is missing" in result.stderr


def test_the_example_registry_passes_check_config_beside_its_model_directory(tmp_path):
    example = ROOT / "config" / "examples" / "local" / "models.yaml"
    shutil.copy(example, tmp_path / "models.yaml")
    for model in yaml.safe_load(example.read_text())["models"].values():
        for route in model["routes"]:
            directory = tmp_path / route["model"]
            if not directory.exists():
                write_model_dir(directory, DirModel(["mean"]))
    env = {"PATH": "/usr/bin:/bin", "MODELS_CONFIG": str(tmp_path / "models.yaml")}
    result = check_config(env, tmp_path)  # relative to the registry, not the working directory
    assert result.returncode == 0, result.stderr
    assert "local:models/all-MiniLM-L6-v2" in result.stdout


# --- CUDA: the option's plumbing (no GPU here) ------------------------------------------------


def test_cuda_is_asked_for_first_with_the_cpu_behind_it_when_onnxruntime_has_it():
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("cuda", gpu) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert execution_providers("cuda:1", gpu)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert execution_providers("cpu", gpu) == ["CPUExecutionProvider"]
    assert execution_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_cuda_route_without_onnxruntime_gpu_warns_and_runs_on_the_cpu(tmp_path, caplog):
    write_model_dir(tmp_path / "dir", DirModel(["mean"]))
    path = registry(tmp_path, {"model": "dir", "options": {"execution_provider": "cuda"}})
    with caplog.at_level(logging.WARNING, logger="app.providers.local"):
        providers = build_providers(read_registry(path, {}))
    asyncio.run(providers["local"].aclose())
    assert "install onnxruntime-gpu" in caplog.text
    spec = resolve("dir", tmp_path, {"execution_provider": "cuda"})
    assert spec.execution_provider == "cuda"
    assert load_graph(spec, 1).session.get_providers() == ["CPUExecutionProvider"]
    assert isinstance(providers["local"], LocalProvider)
