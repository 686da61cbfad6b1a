"""Read the registry file: YAML → `${VAR}` interpolation → typed providers, models and routes.

Each provider type owns its configuration model (app/providers/catalog.py); this module builds
the discriminated union from the table its caller passes (app/runtime/build.py's
`read_registry`), so configuration never imports the providers that build on it.

Every value `${VAR}` put in is masked in every error message about the registry (shown as
`${VAR}`): a provider key written in the wrong field must not reach a terminal, an HTTP answer
or a log line. Messages of errors found later, by code that only holds the built registry (the
provider types' route checks), go through `masked` wherever they are printed.
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from app.config.errors import one_line
from app.config.registry import (
    Model,
    ProviderConfig,
    Registry,
    RegistryError,
    RegistryFile,
    Route,
)
from app.config.yaml_file import MAX_REGISTRY_BYTES, YamlFileError, read_yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_registry(
    path: str | Path,
    environ: Mapping[str, str],
    provider_types: Mapping[str, type[ProviderConfig]],
) -> Registry:
    """Read, interpolate and validate a registry file; `provider_types` maps each `type` name
    to its config model (the table in app/providers/catalog.py, which owns them)."""
    source = str(path)
    try:
        raw = read_yaml(path)
    except FileNotFoundError as exc:
        raise RegistryError(f"{source}: file not found") from exc
    except YamlFileError as exc:
        raise RegistryError(f"{source}: {exc}") from None
    except (OSError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RegistryError(f"{source}: cannot be read as YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{source}: expected a mapping with 'providers' and 'models'")
    interpolation = _Interpolation({**_env_defaults(provider_types), **environ}, source)
    interpolated = interpolation.apply(raw, ())
    _last.update(source, interpolation.values)
    _remember_key_env(raw, interpolated, provider_types)
    try:
        parsed = RegistryFile.model_validate(
            {**interpolated, "providers": _parse_providers(interpolated, provider_types)}
        )
    except ValidationError as exc:
        problem = _mask(_registry_error(exc, provider_types), interpolation.values)
        raise RegistryError(f"{source}: {problem}") from None
    created = int(time.time())
    models = {
        model_id: Model(
            model_id,
            config,
            [
                Route(model_id, index, route.provider, route, parsed.providers[route.provider])
                for index, route in enumerate(config.routes)
            ],
            created,
            parsed.providers,
        )
        for model_id, config in parsed.models.items()
    }
    return Registry(source, dict(parsed.providers), models)


def masked(message: str) -> str:
    """`message` (a RegistryError's, say) with every value the last registry read in this
    process interpolated shown as its `${VAR}`; the file's path at its start is left alone."""
    return _last.mask(message)


def _env_defaults(provider_types: Mapping[str, type[ProviderConfig]]) -> dict[str, str]:
    """Each type's documented defaults (e.g. its public base URL) for `${VAR}` to fall back on."""
    defaults: dict[str, str] = {}
    for config_type in provider_types.values():
        defaults.update(getattr(config_type, "env_defaults", {}))
    return defaults


@functools.cache
def _providers_adapter(types: tuple[type[ProviderConfig], ...]) -> TypeAdapter[Any]:
    # `A | B | ...` built at run time: a union of the types the caller passed.
    union: Any = functools.reduce(operator.or_, types)
    entry: Any = Annotated[union, Field(discriminator="type")]
    # Keyed by "providers" so that errors are located from the top of the file.
    return TypeAdapter(dict[Literal["providers"], dict[str, entry]])


def _parse_providers(
    interpolated: dict[str, Any], provider_types: Mapping[str, type[ProviderConfig]]
) -> Any:
    """The `providers` mapping, each entry validated by the model its `type` names."""
    providers = interpolated.get("providers")
    if not isinstance(providers, dict):
        return providers  # RegistryFile reports the shape
    adapter = _providers_adapter(tuple(provider_types.values()))
    return adapter.validate_python({"providers": providers})["providers"]


class _Interpolation:
    """`${VAR}` and `${VAR:-default}` in every string of the file; `values` maps each value a
    variable put in (not a default written in the file) to the variable's name, for masking."""

    def __init__(self, environ: Mapping[str, str], source: str) -> None:
        self._environ = environ
        self._source = source
        self._added = 0  # characters the variables put in, all told
        self.values: dict[str, str] = {}

    def apply(self, node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: self.apply(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.apply(v, (*path, str(i))) for i, v in enumerate(node)]
        if not isinstance(node, str):
            return node
        return _VAR.sub(lambda match: self._substitute(match, path), node)

    def _substitute(self, match: re.Match[str], path: tuple[str, ...]) -> str:
        name, default = match.group(1), match.group(2)
        environ = self._environ
        if name in environ and (environ[name] != "" or default is None):
            value = environ[name]
            self.values.setdefault(value, name)
            # A big value referenced many times would grow the registry past the file's cap.
            self._added += len(value)
            if self._added > MAX_REGISTRY_BYTES:
                raise RegistryError(
                    f"{self._source}: the values of ${{VAR}} add more than "
                    f"{MAX_REGISTRY_BYTES} bytes to the registry"
                )
            return value
        if default is not None:
            return default
        where = ".".join(path)
        raise RegistryError(
            f"{self._source}: {where}: environment variable {name} is not set "
            f"(write ${{{name}:-}} to allow it to be empty)"
        )


# Interpolated values shorter than this are not masked: no credential is that short, and masking
# a `1` or an `on` would rewrite digits and words all over a message.
_MIN_MASKED = 4


def _mask(text: str, values: Mapping[str, str]) -> str:
    """Each value in `text` (as is, or escaped as `repr` quotes it) replaced by `${NAME}`."""
    forms: dict[str, str] = {}
    for value, name in values.items():
        if len(value) >= _MIN_MASKED:
            forms.setdefault(value, name)
            forms.setdefault(repr(value)[1:-1], name)
    if not forms:
        return text
    # Longest first, so a value that contains another is masked whole.
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, lambda match: "${" + forms[match.group()] + "}", text)


class _LastRead:
    """What the last registry read in this process interpolated: one reload at a time per
    process (app/runtime/reload.py), and start-up reads once."""

    def __init__(self) -> None:
        self._source = ""
        self._values: dict[str, str] = {}

    def update(self, source: str, values: dict[str, str]) -> None:
        self._source, self._values = source, values

    def mask(self, message: str) -> str:
        source = self._source
        if source and message.startswith(source):
            return source + _mask(message[len(source) :], self._values)
        return _mask(message, self._values)


_last = _LastRead()


def _remember_key_env(
    raw: dict[str, Any],
    interpolated: dict[str, Any],
    provider_types: Mapping[str, type[ProviderConfig]],
) -> None:
    """Note which env var each key came from (`api_key_env`), for types that take a key."""
    providers = raw.get("providers")
    if not isinstance(providers, dict):
        return
    for name, entry in providers.items():
        if isinstance(entry, dict) and isinstance(entry.get("api_key"), str):
            config_type = provider_types.get(str(entry.get("type")))
            if config_type is None or "api_key_env" not in config_type.model_fields:
                continue  # validation reports the stray api_key itself
            match = _VAR.search(entry["api_key"])
            target = interpolated["providers"][name]
            if match and isinstance(target, dict) and "api_key_env" not in target:
                target["api_key_env"] = match.group(1)


def _registry_error(exc: ValidationError, provider_types: Mapping[str, Any]) -> str:
    def locate(loc: list[int | str], error_type: str) -> list[int | str]:
        if len(loc) > 2 and loc[0] == "providers" and loc[2] in provider_types:
            del loc[2]  # the union's tag: `providers.up.nanogpt.base_url` names the field twice
        if error_type in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
        return loc

    return one_line(exc, locate)
