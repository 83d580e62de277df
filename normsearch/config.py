"""Loading YAML/JSON configs into pydantic models with one-line, file:key error messages.

Every config error becomes a NormsearchError naming the file, the key path and what is allowed; an unknown
key also gets a "did you mean" from the keys that model accepts.
"""

from __future__ import annotations

import difflib
import json
import re
import stat
import types
import typing
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
        if not loc and re.match(r"^[\w.]+: ", message):  # a whole-model check names its own key
            return f"{source}: {message}"
    return f"{source}: {path}: {message}"


def validate(model: type[M], data: Any, source: str) -> M:
    """`model.model_validate(data)` with errors turned into one NormsearchError line. Numbers are taken
    strictly first (`strict_numbers`): pydantic's lax mode would read ``epochs: true`` as 1."""
    strict_numbers(model, data, source)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise NormsearchError(describe_validation_error(error, model, source)) from None


def _kinds(annotation: Any) -> set[Any]:
    """The member types of a (possibly optional or union) annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {kind for arg in typing.get_args(annotation) for kind in _kinds(arg)}
    return {annotation}


def _submodel(kinds: set[Any]) -> type[BaseModel] | None:
    return next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)


def strict_numbers(model: type[BaseModel], data: Any, source: str, where: str = "") -> None:
    """Refuse a boolean or a string given for a number field, and a float that is no integer (1.5, 1e20)
    for an integer field, in `data` and its nested sections.

    YAML reads ``yes``/``true`` as booleans and ``"8"`` as a string; pydantic's lax mode turns both into
    numbers (``epochs: true`` trains one epoch), which hides a mistake. A field that also accepts strings
    or booleans (``seed: int | str``) is left to the model."""
    if not isinstance(data, dict):
        return
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        value, key = data[name], f"{where}{name}"
        kinds = _kinds(field.annotation)
        problem = _number_problem(kinds, value)
        if problem:
            raise NormsearchError(f"{source}: {key}: {problem}")
        sub = _submodel(kinds)
        if sub is not None:
            strict_numbers(sub, value, source, f"{key}.")
            continue
        origin, args = typing.get_origin(field.annotation), typing.get_args(field.annotation)
        inner = _submodel(set(args[-1:])) if origin in (dict, list) else None
        if inner is not None and isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for item_key, item in items:
                strict_numbers(inner, item, source, f"{key}.{item_key}.")


def _number_problem(kinds: set[Any], value: Any) -> str | None:
    """What is wrong with `value` for a field of these types, or None: a boolean or a string for a number
    field (one that takes no strings or booleans), or a float that is no integer for an integer field."""
    numeric = kinds & {int, float}
    if numeric and not kinds & {str, bool, Any} and isinstance(value, bool | str):
        wanted = "an integer" if int in numeric and float not in numeric else "a number"
        shown = json.dumps(value) if isinstance(value, bool) else repr(value)
        return f"{wanted} is needed, got the {type(value).__name__} {shown[:40]}" + (
            " (write it without quotes)" if isinstance(value, str) else ""
        )
    if int in kinds and not kinds & {float, str, Any} and isinstance(value, float) and _not_an_int(value):
        # pydantic turns 2.0 into 2, but says "unable to parse input string" of 1e20 (YAML 1.2 reads
        # `epochs: 1e20` as a float) and names no number for 1.5.
        return f"an integer is needed, got the float {value!r}"
    return None


def _not_an_int(value: float) -> bool:
    """A float no integer field should take: a fraction, infinity, NaN, or beyond 2**53 (where floats
    stop holding every integer, so `1e20` is not the number the user wrote digit by digit)."""
    return not value.is_integer() or abs(value) > 2**53


# A recipe, space or ArchConfig is a few kilobytes; anything far larger is the wrong file (or a hostile one).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_FILE_KINDS = (
    (stat.S_ISDIR, "is a folder; give a YAML or JSON file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file; give a YAML or JSON file"),
    (stat.S_ISSOCK, "is a socket, not a regular file; give a YAML or JSON file"),
    (stat.S_ISCHR, "is a character device, not a regular file; give a YAML or JSON file"),
    (stat.S_ISBLK, "is a block device, not a regular file; give a YAML or JSON file"),
)


def regular_file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file (a folder, FIFO, socket or device), found by `stat` alone: opening
    a FIFO blocks until a writer comes, and reading a device never ends. None for a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot read ({error.strerror or type(error).__name__})"
    return next((why for test, why in _FILE_KINDS if test(mode)), None)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the
    last silently, so a second `train:` section would drop the first one's keys without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                continue
            if first is not None:
                raise NormsearchError(
                    f"duplicate key {str(key)[:60]!r} at lines {first} and {line} (YAML would keep only "
                    "the last); remove one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-4` and `1e6` as strings: its float needs a dot. Recipes write learning rates
# and weight decays that way, and the strict number fields would refuse them, so the loader also takes
# YAML 1.2's exponent form as a float (`1`, `1.5` and `1.0e-4` are unchanged).
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def parse_value(text: str) -> Any:
    """One YAML value as a recipe file would read it (a `--set key=value`'s value)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _decode_text(path: Path, raw: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16/32 with one; anything else is one line."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as error:
                raise NormsearchError(
                    f"{path}: not valid {codec} text ({error.reason}); save it as UTF-8"
                ) from None
    if b"\x00" in raw:
        raise NormsearchError(
            f"{path}: holds NUL bytes (UTF-16 without a byte-order mark, or a binary file); save it as UTF-8"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NormsearchError(
            f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "save it as UTF-8"
        ) from None


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise NormsearchError(f"duplicate key {key[:60]!r} (JSON would keep only the last); remove one")
        data[key] = value
    return data


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file holding a mapping; errors name the file. The file must be a regular file
    (checked without opening it) of at most MAX_CONFIG_BYTES, in UTF-8 (or UTF-16/32 with a byte-order
    mark), with no key given twice in one mapping."""
    path = Path(path)
    problem = regular_file_problem(path)
    if problem is not None:
        raise NormsearchError(f"{path}: {problem}")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise NormsearchError(f"{path}: cannot read ({error.strerror or type(error).__name__})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise NormsearchError(
            f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is a small text file"
        )
    text = _decode_text(path, raw)
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_json_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except NormsearchError as error:
        raise NormsearchError(f"{path}: {error}") from None
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError) as error:
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
