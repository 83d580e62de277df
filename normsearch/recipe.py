"""Recipes: one YAML file that says what to search, on which data, how to train, and where to write.

`load_recipe(path, **flags)` is the one place where precedence is resolved: a CLI flag beats the recipe,
the recipe beats the defaults below. Every error is one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from normsearch.arch import ArchConfig
from normsearch.config import assign_path, parse_value, read_mapping, validate
from normsearch.data.spec import DataConfig
from normsearch.errors import NormsearchError
from normsearch.metrics import (
    DEFAULT_OBJECTIVES,
    METRICS,
    SELECT_PREFIX,
    SOURCE_ONLY_OBJECTIVES,
    SOURCE_PREFIX,
    SOURCE_VAL_ACC,
    TARGET_SELECT_ACC,
    is_metric,
)
from normsearch.search.constraints import parse_constraint
from normsearch.space import load_space
from normsearch.train import TrainConfig

if TYPE_CHECKING:
    from normsearch.space import Space

# Bounds on a recipe's integers: each far above any sensible use, and far below what would overflow a
# seed, a tensor shape or an estimate (``epochs: 100000000000000000000`` was accepted: "about 4.7e19 min").
SEED_MAX = 2**32 - 1  # numpy's and Ray's seeds are 32-bit unsigned
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_SAMPLES = 100_000
MAX_CONCURRENT = 1_024
MAX_NAME = 128  # a run folder is named <name>-<timestamp>: well inside a file system's 255 bytes
# Letters, digits, `_`, `.`, `-`, not starting with `.` or `-` (a hidden folder, an option): one path part.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RejectBelow(_Strict):
    """A cheap rejection rule (EvoNorm, Liu et al. 2020, §4: 20 % after 100 steps): a trial whose `metric`
    is below `value` after `epoch` epochs is stopped (PRUNED, with the reason), whatever the scheduler."""

    metric: str = SOURCE_VAL_ACC
    value: float
    epoch: int = Field(default=1, ge=1, le=MAX_EPOCHS)

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if not is_metric(value):
            raise ValueError(
                f"unknown metric {value!r}; allowed: {', '.join(METRICS)}, {SELECT_PREFIX}<domain>"
            )
        return value


class SchedulerConfig(_Strict):
    """Early stopping. `asha` stops weak trials on one scalar `metric` (Li et al., 2020); `moasha` is
    successive halving whose promotion ranks the trials at a rung by non-dominated sorting over all the
    search's objectives, ties broken by crowding distance (MO-ASHA, Schmucker et al., 2021), so a trial on
    the front of the second objective is not stopped for being weak on the first."""

    kind: Literal["none", "asha", "moasha"] = "none"
    metric: str = TARGET_SELECT_ACC
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(default=2, ge=1, le=MAX_EPOCHS)
    reduction_factor: float = Field(default=3.0, gt=1.0)
    reject_below: RejectBelow | None = None

    @field_validator("metric", mode="before")
    @classmethod
    def _one_metric(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            raise ValueError(
                "ASHA compares trials on one scalar; give one metric name, not a list (for all the "
                "objectives at once use kind: moasha, which ranks by non-dominated sorting)"
            )
        if isinstance(value, str) and not is_metric(value):
            # Tune would only find out at the first report, after Ray started and trials were sampled.
            raise ValueError(
                f"unknown metric {value!r}; allowed: {', '.join(METRICS)}, {SELECT_PREFIX}<domain>"
            )
        return value


class WarmStartConfig(_Strict):
    """`kind: sn`: before the search, one soft Switchable-Norm "supernet" of the base architecture is
    trained on the sources; the configurations of the space nearest to what its layers learned (each slot's
    IN/LN/BN ratios) are the first trials. `fix_above`: a slot whose largest ratio exceeds it is fixed to
    that normalizer (configurations that disagree there are not trained). `neighbours`: how many of the
    nearest configurations are queued."""

    kind: Literal["none", "sn"] = "none"
    fix_above: float | None = Field(default=None, gt=0.0, le=1.0)
    neighbours: int = Field(default=4, ge=1, le=MAX_SAMPLES)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data


class FailureConfig(_Strict):
    """`retries`: how often Ray Tune restarts a trial whose worker or node was lost, from its last epoch
    checkpoint. A failure in our own code (bad data, a NaN loss) is not retried: it would fail again."""

    retries: int = Field(default=2, ge=0, le=100)


class SearchConfig(_Strict):
    space: str | dict[str, Any]
    algorithm: Literal["nsga2", "tpe", "random", "grid"] = "nsga2"
    num_samples: int = Field(default=8, ge=1, le=MAX_SAMPLES)
    max_concurrent: int = Field(default=2, ge=1, le=MAX_CONCURRENT)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    population: int | None = Field(
        default=None, ge=2, le=MAX_SAMPLES
    )  # NSGA-II population size (default: Optuna's 50)
    scheduler: SchedulerConfig = SchedulerConfig()
    objectives: dict[str, Literal["max", "min"]] = Field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    failures: FailureConfig = FailureConfig()
    constraints: list[str] = Field(default_factory=list)
    warm_start: WarmStartConfig = WarmStartConfig()

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_constraint(text)  # raises ValueError naming what is allowed
        return value

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("at least one objective")
        for name in value:
            if not is_metric(name):
                raise ValueError(
                    f"unknown objective {name!r}; allowed: {', '.join(METRICS)}, {SELECT_PREFIX}<domain>, "
                    f"{SOURCE_PREFIX}<domain>"
                )
        return value


class Resources(_Strict):
    """Per trial. `cpu` is also the trial's torch thread count."""

    cpu: int = Field(default=1, ge=1, le=MAX_CONCURRENT)
    gpu: float = Field(default=0.0, ge=0.0, le=MAX_CONCURRENT)


class RayConfig(_Strict):
    address: str | None = (
        None  # None: a private local Ray on loopback; "auto" or "ray://host:port": a cluster
    )
    # Seconds Ray may take to start (or the cluster to answer) before the driver gives up with exit code 1
    # and the resume command; a loaded machine can take minutes, and without a bound `ray.init` may hang.
    startup_timeout: float = Field(default=300.0, gt=0, le=86400)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value in (None, "", "local"):
            return None
        if value != "auto" and not (value.startswith("ray://") or ":" in value):
            raise ValueError(f"address must be auto, ray://host:port or host:port, got {value!r}")
        return value


class Recipe(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    description: str = ""
    data: DataConfig = DataConfig()
    model: ArchConfig = Field(default_factory=ArchConfig)
    train: TrainConfig = TrainConfig()
    search: SearchConfig
    resources: Resources = Resources()
    ray: RayConfig = RayConfig()
    output: str | None = None
    # Where Ray Tune keeps checkpoints and the run folder is mirrored (run/storage.py): s3://, gs://, a path.
    storage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _objectives_of_the_rule(cls, data: Any) -> Any:
        # Training-domain validation chooses on the sources alone: mean and worst source (a trade-off
        # visible without touching any target). The other rules default to source vs select target.
        if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
            return data
        selection = (data.get("data") or {}).get("selection") if isinstance(data.get("data"), dict) else None
        if selection == "training_domain" and "objectives" not in data["search"]:
            search = {
                **data["search"],
                "objectives": dict(SOURCE_ONLY_OBJECTIVES),
            }
            data = {**data, "search": search}
        return data

    @model_validator(mode="after")
    def _train_bounds(self) -> Recipe:
        # TrainConfig (train/) is also built outside recipes; a recipe's run gets these bounds on top.
        bounds = {"epochs": MAX_EPOCHS, "batch_size": MAX_BATCH, "pretrain_epochs": MAX_EPOCHS}
        for key, bound in bounds.items():
            value = getattr(self.train, key)
            if value is not None and value > bound:
                raise ValueError(f"train.{key}: {value} is above the bound; allowed: 1 to {bound}")
        return self

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        units = self.data.units()
        rule = self.data.selection
        if self.search.constraints and self.search.algorithm not in ("nsga2", "tpe"):
            raise ValueError(
                f"search.constraints: algorithm {self.search.algorithm} samples without looking at "
                "outcomes, so it cannot keep to constraints; use nsga2 or tpe"
            )
        checked = [("search.objectives", name) for name in self.search.objectives]
        checked.append(("search.scheduler.metric", self.search.scheduler.metric))
        for key, name in checked:
            if name.startswith(SELECT_PREFIX):
                domain = name.removeprefix(SELECT_PREFIX)
                if not all(domain in unit.select for unit in units):
                    raise ValueError(
                        f"{key}: {name!r} names no select domain (of every training unit); select "
                        f"domains: {', '.join(self.data.select) or 'none'}"
                    )
            if name.startswith(SOURCE_PREFIX):
                domain = name.removeprefix(SOURCE_PREFIX)
                if not all(domain in unit.sources for unit in units) or len(units[0].sources) < 2:
                    raise ValueError(
                        f"{key}: {name!r}: per-source accuracies exist for a domain every unit "
                        f"trains on, with several sources; sources: {', '.join(self.data.sources)}"
                    )
            if name == TARGET_SELECT_ACC and not units[0].select and key == "search.objectives":
                raise ValueError(
                    f"{key}: target_select_acc: under selection {rule} no target is selected on; "
                    "use source_val_acc and worst_source_val_acc"
                )
        sched = self.search.scheduler
        if sched.kind != "none" and sched.grace_period >= self.train.epochs:
            # Ray's ASHA asserts on this when it is built, after Ray started; MO-ASHA would have no rung.
            raise ValueError(
                f"search.scheduler.grace_period: {sched.grace_period} epochs leaves {sched.kind} no rung "
                f"before the last epoch (train.epochs {self.train.epochs}); allowed: "
                + (f"1 to {self.train.epochs - 1}" if self.train.epochs > 1 else "scheduler kind none")
            )
        return self

    @property
    def search_seed(self) -> int:
        """The sampler's seed: `search.seed`, else the recipe's."""
        return self.seed if self.search.seed is None else self.search.seed


def load_recipe(
    path: str | Path,
    *,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    output: str | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
) -> tuple[Recipe, Space]:
    """Read and validate a recipe with CLI flags laid over it; returns the recipe and its search space
    (loaded and checked against the recipe's model). `overrides` are ``key.path=value`` strings (the value
    parsed as YAML), applied before the named flags."""
    path = Path(path)
    raw = read_mapping(path)
    flags = {
        "name": name,
        "search.num_samples": num_samples,
        "search.max_concurrent": max_concurrent,
        "ray.address": address,
        "output": output,
        "storage": storage,
    }
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise NormsearchError(f"--set {item!r}: write key.path=value, e.g. train.epochs=2")
        if not text.strip():
            # YAML reads an empty value as null, which would silently put the default back.
            raise NormsearchError(
                f"--set {item!r}: no value after '='; write key.path=value (key.path=null removes the key)"
            )
        try:
            value = parse_value(text)
        except yaml.YAMLError as error:
            detail = str(error).splitlines()[0]
            raise NormsearchError(f"--set {item!r}: the value is not valid YAML ({detail})") from None
        try:
            assign_path(raw, key.strip(), value)
        except NormsearchError as error:
            raise NormsearchError(f"--set {item!r}: {error}") from None
    for key, value in flags.items():
        if value is not None:
            try:
                assign_path(raw, key, value)
            except NormsearchError as error:
                raise NormsearchError(f"{path}: {error}") from None
    recipe = validate(Recipe, raw, str(path))
    space = load_space(
        recipe.search.space, relative_to=path.parent, source=f"{path}: search.space", exclude=path
    )
    space.check(recipe.model, f"{path}: search.space")
    if recipe.search.algorithm == "grid" and space.size() is None:
        raise NormsearchError(
            f"{path}: search.algorithm: grid needs a finite space; {space.name} has a continuous parameter "
            "without a step"
        )
    return recipe, space
