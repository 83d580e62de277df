"""Loading YAML/JSON configs into pydantic models with one-line, file:key error messages.

Every config error becomes a NormsearchError naming the file, the key path and what is allowed; an unknown
key also gets a "did you mean" from the keys that model accepts.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from normsearch.errors import NormsearchError

M = TypeVar("M", bound=BaseModel)
_INDEX = re.compile(r"^(?P<key>[A-Za-z_][\w]*)\[(?P<index>\d+)\]$")


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, for "did you mean" suggestions. Keys of a
    dict-valued field and list indices (e.g. `params.<name>`) are stepped over."""
    current: Any = model
    keyed = False  # True right after a dict- or list-valued field: the next part is a key or an index
    for part in loc[:-1]:
        if keyed:
            keyed = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        keyed = getattr(annotation, "__origin__", None) in (dict, list)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union or a validator wrapper in `loc`; those are not keys."""
    return isinstance(part, str) and (
        part.startswith(("function-", "list[", "dict[", "tuple[", "constrained-"))
        or part in ("str", "int", "float", "bool", "none")
    )


def describe_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line for the first problem in `error`: ``source: key.path: what is wrong (allowed ...)``.

    An unknown key is reported before anything else: a misspelt key (``serach``) also makes the key it
    meant missing, and "did you mean" is the useful line."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in first["loc"] if not _is_union_tag(p))
    path = ".".join(str(p) for p in loc) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        allowed = sorted(owner.model_fields) if owner else []
        key = str(loc[-1])
        # A shortened key (`grace` for `grace_period`) is too unlike the whole one for difflib alone.
        guess = (
            difflib.get_close_matches(key, allowed, n=1)
            or [k for k in allowed if len(key) >= 3 and k.startswith(key)][:1]
        )
        message = "unknown key" + (f"; did you mean {guess[0]!r}?" if guess else "")
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
    elif first["type"].startswith("value_error"):
        message = message.removeprefix("Value error, ")
    return f"{source}: {path}: {message}"


def validate(model: type[M], data: Any, source: str) -> M:
    """`model.model_validate(data)` with errors turned into one NormsearchError line."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise NormsearchError(describe_validation_error(error, model, source)) from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file holding a mapping; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise NormsearchError(f"{path}: is a folder; give a YAML or JSON file")
    if not path.is_file():
        raise NormsearchError(f"{path}: no such file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NormsearchError(f"{path}: cannot parse: {detail}") from None
    if not isinstance(data, dict):
        raise NormsearchError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def assign_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Write `value` at a dotted ArchConfig path; ``key[i]`` indexes a list (growing it); None deletes."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        match = _INDEX.match(part)
        key = match["key"] if match else part
        if not isinstance(node, dict):
            raise NormsearchError(f"path {path}: {'.'.join(parts[:i])} is not a mapping")
        if match:
            index = int(match["index"])
            current = node.get(key)
            items = list(current) if isinstance(current, list) else []
            items.extend([None] * (index + 1 - len(items)))
            if last:
                items[index] = value
                node[key] = items
                return
            if items[index] is None:
                items[index] = {}
            node[key] = items
            node = items[index]
        elif last:
            if value is None:
                node.pop(key, None)
            else:
                node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
