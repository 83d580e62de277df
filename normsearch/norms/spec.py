"""`NormSpec`: a normalizer kind plus its parameters, written as ``kind`` or ``kind:key=value,...``.

A spec is what every other part of normsearch passes around (plans, search spaces, exported configs);
`str(spec)` is its canonical text form and `NormSpec.parse(str(spec)) == spec` always holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from normsearch.errors import NormsearchError

ParamValue = bool | int | float | str


def _parse_value(text: str) -> ParamValue:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _format_value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class NormSpec:
    """One normalizer choice: `kind` (a registered name such as ``ibn``) and its parameters.

    Parameters are kept sorted by key so that equal specs compare and hash equal whatever order
    they were written in.
    """

    kind: str
    params: tuple[tuple[str, ParamValue], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", self.kind.strip().lower())
        object.__setattr__(self, "params", tuple(sorted((str(k), v) for k, v in self.params)))

    @classmethod
    def of(cls, kind: str, **params: ParamValue) -> NormSpec:
        """Build a spec from keyword parameters: ``NormSpec.of("ibn", ratio=0.25)``."""
        return cls(kind, tuple(params.items()))

    @classmethod
    def parse(cls, text: str) -> NormSpec:
        """Parse ``kind`` or ``kind:key=value,key=value``; values become bool, int, float or str."""
        if not isinstance(text, str) or not text.strip():
            raise NormsearchError(f"normalizer spec {text!r}: expected 'kind' or 'kind:key=value,...'")
        kind, _, rest = text.strip().partition(":")
        params: dict[str, ParamValue] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise NormsearchError(f"normalizer spec {text!r}: parameter {item!r} is not key=value")
            params[key.strip()] = _parse_value(value.strip())
        return cls(kind, tuple(params.items()))

    @classmethod
    def coerce(cls, spec: NormSpec | str | Mapping[str, Any]) -> NormSpec:
        """Accept a NormSpec, a spec string, or a mapping ``{"kind": ..., **params}``."""
        if isinstance(spec, NormSpec):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        if isinstance(spec, Mapping):
            if "kind" not in spec:
                raise NormsearchError(f"normalizer spec {dict(spec)!r}: missing 'kind'")
            params = {k: v for k, v in spec.items() if k != "kind"}
            return cls(str(spec["kind"]), tuple(params.items()))
        raise NormsearchError(f"normalizer spec {spec!r}: expected a string, a mapping or a NormSpec")

    @property
    def kwargs(self) -> dict[str, ParamValue]:
        """The parameters as a dict, ready to be passed to the layer's constructor."""
        return dict(self.params)

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)

    def __str__(self) -> str:
        if not self.params:
            return self.kind
        return self.kind + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in self.params)
