"""Search spaces: a small YAML grammar -> Optuna define-by-run sampling -> ArchConfig.

A space file::

    # IBN-Net Table 5: ...            <- the first comment names the paper table it explores
    fixed:                            <- ArchConfig paths set in every trial
      norm.ibn.variant: a
    params:                           <- sampled in this order (define-by-run)
      per_stage: {type: bool}
      ratio: {type: float, low: 0.0, high: 1.0, step: 0.125, path: norm.ibn.ratio, when: {per_stage: false}}
      ratio_1: {type: float, low: 0.0, high: 1.0, path: "norm.ibn.ratio[0]", when: {per_stage: true}}
      groups:
        type: categorical
        choices: [none, "1-2"]
        sets: {none: {norm.ibn: null}, "1-2": {norm.ibn.stages: [1, 2]}}

A space may also list test-time statistics policies (``policies: [running, batch, adabn, "mix:alpha=0.5"]``,
norms/running.py): not a searched parameter but an evaluation-only dimension. Every trained network is
evaluated under each of them after its last epoch, from the same weights (no retraining); the first one is
the network's own (`norm.inference`: what every epoch and the study's objectives are measured under), the
others are recorded beside it, and the results rows and the front are (trial, policy) pairs. A policy
written by a parameter (``path: norm.inference``, the old form) still searches it as a separate trial per
policy, but not together with ``policies``.

Types map onto Optuna's distributions: ``float`` (low, high, log, step), ``int`` (low, high, log, step),
``categorical`` (choices: scalars), ``bool``. ``path`` writes the sampled value into the ArchConfig (``[i]``
indexes a list); ``sets`` writes per-choice values (``null`` removes a rule). ``when`` makes a parameter
active only while earlier parameters have the given value(s); an inactive parameter is not sampled at all,
so Optuna's samplers see the true conditional space.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from normsearch.arch import ArchConfig
from normsearch.config import assign_path, read_mapping, validate
from normsearch.errors import NormsearchError
from normsearch.norms.running import StatsPolicy

Scalar = bool | int | float | str | None
MAX_ENUMERATION = 100_000
INFERENCE_PATH = "norm.inference"  # the ArchConfig path of the test-time statistics policy


class Param(BaseModel):
    """One searched parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float", "int", "categorical", "bool"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Scalar] | None = None
    path: str | None = None
    sets: dict[str, dict[str, Any]] | None = None
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} parameter needs low and high")
            if self.low > self.high:
                raise ValueError(f"low {self.low} is above high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("Optuna does not combine log with step; use one")
            if self.type == "int" and any(
                v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)
            ):
                raise ValueError("an int parameter needs integer low, high and step")
        elif self.low is not None or self.high is not None or self.step is not None:
            raise ValueError(f"low/high/step belong to float and int parameters, not {self.type}")
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical parameter needs a non-empty choices list")
        if self.type != "categorical" and self.choices is not None:
            raise ValueError(f"choices belong to categorical parameters, not {self.type}")
        if self.sets is not None:
            labels = {str(c) for c in self.values() or []}
            unknown = sorted(set(self.sets) - labels)
            if unknown:
                raise ValueError(f"sets: {unknown[0]!r} is not one of the choices {sorted(labels)}")
        return self

    def values(self) -> list[Scalar] | None:
        """Every value this parameter can take, or None when it is continuous."""
        if self.type == "bool":
            return [False, True]
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            if self.log:
                return list(range(int(self.low), int(self.high) + 1))
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + k * self.step, 12) for k in range(count)]

    def suggest(self, trial: Any, name: str) -> Scalar:
        """Sample this parameter from an Optuna trial (define-by-run)."""
        if self.type == "bool":
            return trial.suggest_categorical(name, [False, True])
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def active(self, values: dict[str, Scalar]) -> bool:
        """Whether every `when` condition holds for the values sampled so far."""
        for other, wanted in self.when.items():
            if other not in values:
                return False
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if values[other] not in allowed:
                return False
        return True


class Space(BaseModel):
    """A parsed search space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "inline"
    description: str = ""
    requires: dict[str, str] = Field(default_factory=dict)  # e.g. {block: bottleneck}, checked per recipe
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param] = Field(default_factory=dict)
    # test-time statistics evaluated on every trained network, first = its own (module docstring)
    policies: list[str] = Field(default_factory=list)
    _file: str | None = PrivateAttr(default=None)  # the file it was read from; None: inline

    @property
    def file(self) -> str | None:
        """The file this space was read from (None for an inline one)."""
        return self._file

    @model_validator(mode="after")
    def _conditions(self) -> Space:
        seen: list[str] = []
        for name, param in self.params.items():
            for other, wanted in param.when.items():
                if other not in seen:
                    raise ValueError(
                        f"params.{name}.when: {other!r} must be a parameter defined above {name!r}"
                    )
                allowed = self.params[other].values()
                for value in wanted if isinstance(wanted, list) else [wanted]:
                    if allowed is not None and value not in allowed:
                        raise ValueError(
                            f"params.{name}.when: {other}={value!r} is not a value {other} can take "
                            f"({allowed})"
                        )
            seen.append(name)
        return self

    @field_validator("policies")
    @classmethod
    def _parse_policies(cls, value: list[str]) -> list[str]:
        try:
            parsed = [str(StatsPolicy.parse(str(text))) for text in value]
        except NormsearchError as error:
            raise ValueError(str(error)) from None
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"{value} lists a policy twice")
        return parsed

    @model_validator(mode="after")
    def _policies_not_searched(self) -> Space:
        writers = [f"fixed.{INFERENCE_PATH}"] if INFERENCE_PATH in self.fixed else []
        writers += [
            f"params.{name}"
            for name, param in self.params.items()
            if param.path == INFERENCE_PATH or any(INFERENCE_PATH in v for v in (param.sets or {}).values())
        ]
        if self.policies and writers:
            raise ValueError(
                f"{writers[0]} writes {INFERENCE_PATH} while `policies` evaluates every trained network "
                f"under {self.policies}: drop {writers[0]} (policies are evaluated, not searched)"
            )
        return self

    # --- sampling ----------------------------------------------------------------------------------
    def sample(self, trial: Any) -> dict[str, Scalar]:
        """Define-by-run: sample the active parameters from an Optuna trial, in order."""
        values: dict[str, Scalar] = {}
        for name, param in self.params.items():
            if param.active(values):
                values[name] = param.suggest(trial, name)
        return values

    def assignments(self) -> list[dict[str, Scalar]] | None:
        """Every distinct assignment of the active parameters, or None if the space is continuous or
        larger than MAX_ENUMERATION."""
        partial: list[dict[str, Scalar]] = [{}]
        for name, param in self.params.items():
            grown: list[dict[str, Scalar]] = []
            for values in partial:
                if not param.active(values):
                    grown.append(values)
                    continue
                options = param.values()
                if options is None:
                    return None
                grown.extend({**values, name: option} for option in options)
            if len(grown) > MAX_ENUMERATION:
                return None
            partial = grown
        return partial

    def size(self) -> int | None:
        """How many distinct configurations the space holds; None when continuous."""
        found = self.assignments()
        return None if found is None else len(found)

    # --- mapping onto ArchConfig -------------------------------------------------------------------
    def to_arch(
        self, base: ArchConfig, values: dict[str, Scalar], source: str | None = None, resolve: bool = True
    ) -> ArchConfig:
        """The ArchConfig of one sampled assignment: `base`, then `fixed`, then each active parameter.
        With `resolve` (the driver, sampling it) its NormPlan is resolved too, so a placement error is one
        line then; a trial's worker, which resolves the plan once for training, passes False (the fields
        are still validated)."""
        data = base.to_dict()
        where = source or f"space {self.name}"

        def assign(key: str, path: str, value: Any) -> None:
            try:
                assign_path(data, path, value)
            except NormsearchError as error:  # name the space entry that holds the path
                raise NormsearchError(f"{where}: {key}: {error}") from None

        for path, value in self.fixed.items():
            assign("fixed", path, value)
        if self.policies:  # the network's own policy: the first evaluated one
            assign("policies", INFERENCE_PATH, self.policies[0])
        for name, param in self.params.items():
            if name not in values:
                continue
            value = values[name]
            if param.path:
                assign(f"params.{name}.path", param.path, value)
            for path, set_value in (param.sets or {}).get(str(value), {}).items():
                assign(f"params.{name}.sets", path, set_value)
        return ArchConfig.from_dict(data, where) if resolve else validate(ArchConfig, data, where)

    def check(self, base: ArchConfig, source: str) -> int:
        """Build the ArchConfig (and its NormPlan) of every assignment, or of a grid over continuous ones,
        so that a bad path or an impossible combination fails before any trial runs. Returns the count."""
        for key, wanted in self.requires.items():
            have = base.backbone.resolved().get(key)
            if str(have) != str(wanted):
                raise NormsearchError(
                    f"{source}: space {self.name} requires {key}={wanted}; "
                    f"the recipe's model has {key}={have}"
                )
        checked = 0
        for values in self.probe_assignments():
            self.to_arch(base, values, f"{source} ({self.name} with {values})")  # resolves its plan
            checked += 1
        return checked

    def probe_assignments(self) -> list[dict[str, Scalar]]:
        found = self.assignments()
        if found is not None and len(found) <= 512:
            return found
        # Continuous or large: probe the ends and middle of every range, with conditions honoured.
        probes: list[dict[str, Scalar]] = []
        for pick in (0, 1, 2):
            values: dict[str, Scalar] = {}
            for name, param in self.params.items():
                if not param.active(values):
                    continue
                options = param.values()
                if options is None:
                    assert param.low is not None and param.high is not None
                    options = [param.low, (param.low + param.high) / 2, param.high]
                values[name] = options[min(pick * (len(options) - 1) // 2, len(options) - 1)]
            probes.append(values)
        for name, param in self.params.items():  # every categorical choice at least once
            for option in (param.values() or [])[:32] if param.type != "float" else []:
                values = dict(probes[0])
                if param.active(values):
                    values[name] = option
                    probes.append(_reactivate(self, values))
        return probes

    def summary(self) -> list[tuple[str, str, str]]:
        """(name, domain, condition) rows for display."""
        rows = []
        for name, param in self.params.items():
            if param.type in ("float", "int"):
                domain = f"{param.type} [{param.low:g}, {param.high:g}]"
                if param.step:
                    domain += f" step {param.step:g}"
                if param.log:
                    domain += " log"
            elif param.type == "bool":
                domain = "bool"
            else:
                domain = " | ".join(str(c) for c in param.choices or [])
            cond = ", ".join(f"{k}={v}" for k, v in param.when.items())
            rows.append((name, domain, cond))
        return rows


def _reactivate(space: Space, values: dict[str, Scalar]) -> dict[str, Scalar]:
    """Drop parameters whose conditions no longer hold and fill newly active ones with their first value."""
    out: dict[str, Scalar] = {}
    for name, param in space.params.items():
        if not param.active(out):
            continue
        if name in values:
            out[name] = values[name]
        else:
            options = param.values()
            out[name] = options[0] if options else param.low
    return out


def first_comment(text: str) -> str:
    """The leading comment block of a YAML file, joined into one line."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines.append(line.lstrip("#").strip())
        elif line.strip():
            break
    return " ".join(lines)


def spaces_dir() -> Path:
    """The shipped spaces: `normsearch/search_spaces/`, inside the installed package."""
    return Path(__file__).resolve().parent / "search_spaces"


def find_space_file(
    spec: str, beside: Path | None = None, source: str = "space", exclude: Path | None = None
) -> Path:
    """The file a space string names, by one rule with no silent fallback:

    - with a directory part (``/abs/s.yaml``, ``spaces/s.yaml``): that file, relative to `beside` (the
      recipe's folder) and then the working directory; else an error (never a shipped space);
    - a bare name (``ibn_ratio``, ``ibn_ratio.yaml``): the file of exactly that name beside the recipe (or
      in the working directory without one), else the shipped space of that name; else an error.

    `exclude` (the recipe itself) is never taken: ``space: ibn_groups.yaml`` in recipes/ibn_groups.yaml
    means the shipped space, not the recipe."""
    given = Path(spec)
    folder = beside if beside is not None else Path(".")
    if not spec.strip() or given.name in ("", ".", ".."):
        raise NormsearchError(f"{source}: {spec!r} names no space file")
    if given.is_absolute():
        candidates = [given]
    elif given.parent != Path("."):
        candidates = list(dict.fromkeys([folder / given, given]))
    else:
        shipped = [spaces_dir() / spec] if given.suffix == ".yaml" else [spaces_dir() / f"{spec}.yaml"]
        candidates = [folder / given, *shipped]
    skip = exclude.resolve() if exclude is not None else None
    for path in candidates:
        if path.exists() and (skip is None or path.resolve() != skip):
            return path  # read_mapping refuses a folder, FIFO or device in one line
    raise NormsearchError(
        f"{source}: no space file {spec!r} (looked at {', '.join(map(str, candidates))}); a path with a "
        f"folder is that file, a bare name is a file beside the recipe or a shipped space "
        f"({', '.join(p.stem for p in list_spaces())})"
    )


def load_space(
    spec: str | dict[str, Any],
    relative_to: Path | None = None,
    source: str = "space",
    exclude: Path | None = None,
) -> Space:
    """A space from an inline mapping, or from the file `find_space_file` names (`relative_to`: the
    recipe's folder). The space remembers that file (`Space.file`) so the dry run can say which it took."""
    if isinstance(spec, dict):
        return validate(Space, spec, source)
    path = find_space_file(spec, relative_to, source, exclude)
    try:
        raw = read_mapping(path)
    except NormsearchError as error:  # name the recipe key that pointed here as well as the file
        raise NormsearchError(f"{source}: {error}" if source != "space" else str(error)) from None
    raw.setdefault("name", path.stem)
    raw.setdefault("description", first_comment(path.read_text(encoding="utf-8", errors="replace")))
    space = validate(Space, raw, str(path))
    space._file = str(path)
    return space


def list_spaces() -> list[Path]:
    """The space files shipped in search_spaces/."""
    return sorted(spaces_dir().glob("*.yaml"))


__all__ = ["Param", "Space", "list_spaces", "load_space"]
