"""`load_config`: one YAML file → a validated config, `--set a.b=c` overrides on top.

Unknown keys and bad values are errors that name the key the way the user wrote it
(`rollout.group_size: must be >= 1`; a value from the command line as `--set key=value`; an
unknown key with the nearest known one: `did you mean 'concurrency'?`), all reported at once.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hillclimb.config.run import RunConfig
from hillclimb.errors import ConfigError


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def _location(tree: Any, loc: tuple[Any, ...]) -> str:
    """The error's key as the user wrote it. pydantic puts a discriminated union's tag in the
    path (`policy.hf.max_batch`); the user wrote `policy.max_batch`, with `type: hf` beside it."""
    parts, node = [], tree
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and part not in node and (node.get("type") == part or following in node):
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field may hold: itself, or a union's members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed beside the unknown one at `loc` (pydantic's path: a discriminated
    union's tag stands between the field and its member's keys)."""
    models = [model]
    for part in loc[:-1]:
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == part]
        if len(models) > 1 and tagged:
            models = tagged
            continue
        if len(models) != 1 or part not in models[0].model_fields:
            return []
        models = _models_in(models[0].model_fields[part].annotation)
    return list(models[0].model_fields) if len(models) == 1 else []


def _problem(err: Any, tree: dict[str, Any], model: type[BaseModel], overrides: dict[str, str]) -> tuple[str, bool]:
    """One problem as a line in the user's spelling, and whether a `--set` caused it."""
    where = _location(tree, err["loc"]) or "<top>"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(model, err["loc"]), n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    blamed = next((item for key, item in overrides.items() if key == where or where.startswith(key + ".")), None)
    blamed = blamed or next((item for key, item in overrides.items() if key.startswith(where + ".")), None)
    return (f"--set {_without_credentials(blamed)}: {message}" if blamed else f"{where}: {message}"), blamed is not None


def _without_credentials(text: str) -> str:
    """`text` with the user:password and secret-named query options of any URI in it masked:
    errors are printed and logged."""
    text = re.sub(r"(\w+://)[^/@\s]*@", r"\1***@", text)
    return re.sub(r"([?&][^=&\s]*(?:token|secret|key|password)[^=&\s]*=)[^&\s]*", r"\1***", text, flags=re.I)


def load_config(path: str | Path | None, overrides: list[str] = (), model: type[BaseModel] = RunConfig) -> Any:  # type: ignore[assignment]
    """Read YAML (or start from defaults), apply `key.path=value` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        tree = loaded or {}
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set(tree, key.strip(), value)
        given[key.strip()] = item
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        problems = [_problem(err, tree, model, given) for err in e.errors()]
        from_file = [line for line, blamed in problems if not blamed]
        source = f" in {path}" if path and from_file else " on the command line" if not from_file else ""
        lines = "\n".join(f"  {line}" for line, _ in problems)
        raise ConfigError(f"{len(problems)} invalid setting(s){source}:\n{lines}") from None
