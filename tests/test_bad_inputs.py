"""Issue 9's bad-input matrix: every bad recipe, space, ArchConfig, data folder, CLI flag and output path is
exit code 2, one line on stderr starting with "error:" that names the file/key, no traceback, and no run
folder left behind (an existing run is left exactly as it was).

Every case fails in the checks that run before Ray (`run` goes through `normsearch.search.preflight`, and
`--dry-run` where the checks could pass); none starts Ray or trains. Paths in a case are written with
placeholders that are filled in per test: ``<tmp>`` (the case's own folder, also the working directory),
``<good>`` (a valid recipe on a small image folder), ``<data>`` (that folder) and ``<run>`` (a run folder
holding one complete trial).

Issue 20's strict inputs are the HOSTILE table: duplicate keys, booleans and strings for numbers, integers at
and past their bounds, encodings, FIFOs, sockets and devices where a file is expected, oversized images,
space paths and exports of trials that did not complete. Every case runs under an alarm: a hang (a FIFO
opened for reading blocks until a writer comes) fails the case instead of the suite.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from normsearch.cli import app

runner = CliRunner()

GOOD: dict[str, Any] = {
    "name": "good",
    "data": {
        "dataset": "folder",
        "root": "<data>",
        "source": "photo",
        "select": ["sketch"],
        "test": ["art"],
        "size": 8,
    },
    "model": {"backbone": {"preset": "resnet-mini", "num_classes": 2}},
    "train": {"epochs": 1, "batch_size": 8},
    "search": {
        "space": {
            "params": {
                "ibn": {
                    "type": "categorical",
                    "choices": ["none", "half"],
                    "sets": {"none": {"norm.ibn": None}, "half": {"norm.ibn.ratio": 0.5}},
                }
            }
        },
        "algorithm": "grid",
        "num_samples": 2,
    },
}
DELETE = object()


def recipe(changes: dict[str, Any] | None = None) -> str:
    """The good recipe's YAML with `changes` laid over it: each key is a dotted path into the recipe, its
    value written whole (so a space's `sets`, whose keys hold dots, goes in as one value); DELETE removes
    the key."""
    data = copy.deepcopy(GOOD)
    for path, value in (changes or {}).items():
        node = data
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last)
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def space_recipe(space: Any, **changes: Any) -> str:
    """The good recipe with `search.space` replaced (inline mapping, or a name/path string)."""
    return recipe({"search.space": space, **changes})


def image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade * 20 % 256, 90, 160)).save(path)


def domains(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<domain>/<class>/<i>.png with the given number of 8×8 images per class."""
    for domain, classes in layout.items():
        for cls, count in classes.items():
            (root / domain / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image(root / domain / cls / f"{i}.png", i)
    return root


GOOD_LAYOUT = {d: {"cat": 10, "dog": 10} for d in ("photo", "sketch", "art")}


def folder(layout: dict[str, dict[str, int]] | None = None, **changes: Any) -> Callable[[Path], None]:
    """Setup: build an image folder at <tmp>/d (the good layout by default) and a recipe <tmp>/r.yaml
    reading it, with `changes` applied; `then(folder(...), write(...))` breaks the folder further."""

    def build(tmp: Path) -> None:
        domains(tmp / "d", layout or GOOD_LAYOUT)
        (tmp / "r.yaml").write_text(recipe({"data.root": str(tmp / "d"), **changes}))

    return build


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return build


def write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return build


def no_ray_cluster_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--address auto` looks for a cluster on this machine (RAY_ADDRESS, the address `ray start` left,
    running GCS processes); other test runs on a shared machine may have a local Ray up, so the case
    "no cluster" hides them from Ray's discovery."""
    import ray._private.services as services
    import ray._private.utils as utils

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setattr(utils, "read_ray_address", lambda temp_dir=None: None)


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, what its one error line must contain, and how to set it up."""

    id: str
    args: list[str]
    expect: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative to <tmp>
    setup: Callable[[Path], None] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    within: float = 60.0  # seconds: a bad input is refused promptly, never by a hang


RUN = ["run", "<tmp>/r.yaml", "--dry-run", "--no-estimate", "--output", "<tmp>/out"]


def bad_recipe(id: str, text: str, *expect: str) -> Case:
    return Case(id, RUN, ("r.yaml", *expect), files={"r.yaml": text})


def refused_by_preflight(id: str, text: str, *expect: str, within: float = 60.0) -> Case:
    """A recipe that parses but that the checks before Ray refuse: the line names the key (resources.cpu)
    or the data folder and domain it is about, not the recipe file."""
    return Case(id, RUN, expect, files={"r.yaml": text}, within=within)


def bad_space_file(id: str, text: str, *expect: str) -> Case:
    """A space in its own file, checked by `spaces validate`."""
    return Case(id, ["spaces", "validate", "<tmp>/s.yaml"], ("s.yaml", *expect), files={"s.yaml": text})


def bad_arch(id: str, text: str, *expect: str) -> Case:
    return Case(id, ["plan", "<tmp>/a.yaml"], ("a.yaml", *expect), files={"a.yaml": text})


def param(**spec: Any) -> dict[str, Any]:
    return {"params": {"x": spec}}


RECIPES = [
    bad_recipe("yaml-unclosed-flow", "name: x\nsearch: {space: [1\n", "cannot parse"),
    bad_recipe("yaml-tab-indent", "name: x\nsearch:\n\tspace: quickstart\n", "cannot parse"),
    bad_recipe("yaml-duplicate-colon", "name: x: y\n", "cannot parse"),
    bad_recipe("top-level-list", "- name: x\n", "expected a mapping at the top level, got list"),
    bad_recipe("empty-file", "", "expected a mapping at the top level"),
    Case("recipe-missing", ["run", "<tmp>/nope.yaml", "--dry-run"], ("nope.yaml", "no such file")),
    Case("recipe-is-a-folder", ["run", "<tmp>", "--dry-run"], ("is a folder; give a YAML or JSON file",)),
    bad_recipe("json-syntax", "{", "cannot parse"),
    # unknown keys at every level, with "did you mean"
    bad_recipe(
        "typo-top-level-serach",
        recipe({"serach": GOOD["search"], "search": DELETE}),
        "serach: unknown key; did you mean 'search'",
    ),
    bad_recipe("typo-data-sorce", recipe({"data.sorce": "photo"}), "data.sorce", "did you mean 'source'"),
    bad_recipe("typo-train-epoch", recipe({"train.epoch": 2}), "train.epoch", "did you mean 'epochs'"),
    bad_recipe(
        "typo-train-augment-hflips",
        recipe({"train.augment.hflips": True}),
        "train.augment.hflips",
        "did you mean 'hflip'",
    ),
    bad_recipe(
        "typo-search-num-sample",
        recipe({"search.num_sample": 3}),
        "search.num_sample",
        "did you mean 'num_samples'",
    ),
    bad_recipe(
        "typo-scheduler-grace",
        recipe({"search.scheduler.grace": 2}),
        "search.scheduler.grace",
        "did you mean 'grace_period'",
    ),
    bad_recipe(
        "typo-failures-retry",
        recipe({"search.failures.retry": 1}),
        "search.failures.retry",
        "did you mean 'retries'",
    ),
    bad_recipe("typo-resources-cpus", recipe({"resources.cpus": 1}), "resources.cpus", "did you mean 'cpu'"),
    bad_recipe("typo-ray-adress", recipe({"ray.adress": "auto"}), "ray.adress", "did you mean 'address'"),
    bad_recipe(
        "typo-backbone-presett",
        recipe({"model.backbone.presett": "resnet-mini"}),
        "model.backbone.presett",
        "did you mean 'preset'",
    ),
    bad_recipe(
        "typo-norm-defualt",
        recipe({"model.norm.defualt": "bn"}),
        "model.norm.defualt",
        "did you mean 'default'",
    ),
    bad_recipe(
        "typo-ibn-ratios",
        recipe({"model.norm.ibn.ratios": 0.5}),
        "model.norm.ibn.ratios",
        "did you mean 'ratio'",
    ),
    bad_recipe("typo-model-normm", recipe({"model.normm": {}}), "model.normm", "did you mean 'norm'"),
    # wrong types and out-of-range values
    bad_recipe("epochs-not-a-number", recipe({"train.epochs": "ten"}), "train.epochs", "integer"),
    bad_recipe("num-samples-zero", recipe({"search.num_samples": 0}), "search.num_samples", "greater than"),
    bad_recipe("lr-negative", recipe({"train.lr": -1}), "train.lr", "greater than 0"),
    bad_recipe("momentum-one", recipe({"train.momentum": 1.0}), "train.momentum", "less than 1"),
    bad_recipe(
        "optimizer-unknown", recipe({"train.optimizer": "adam"}), "train.optimizer", "'sgd' or 'adamw'"
    ),
    bad_recipe("schedule-unknown", recipe({"train.schedule": "linear"}), "train.schedule", "cosine"),
    bad_recipe(
        "batch-size-one", recipe({"train.batch_size": 1}), "train.batch_size", "greater than or equal to 2"
    ),
    bad_recipe("image-size-tiny", recipe({"data.size": 4}), "data.size", "greater than or equal to 8"),
    bad_recipe("val-fraction-high", recipe({"data.val_fraction": 0.6}), "data.val_fraction", "less than 0.5"),
    bad_recipe("name-with-spaces", recipe({"name": "bad name!"}), "name", "pattern"),
    bad_recipe("name-missing", recipe({"name": DELETE}), "name", "Field required"),
    bad_recipe("search-missing", recipe({"search": DELETE}), "search", "Field required"),
    bad_recipe("space-missing", recipe({"search.space": DELETE}), "search.space", "Field required"),
    bad_recipe("algorithm-unknown", recipe({"search.algorithm": "bayes"}), "search.algorithm", "nsga2"),
    bad_recipe("max-concurrent-zero", recipe({"search.max_concurrent": 0}), "search.max_concurrent"),
    bad_recipe("population-one", recipe({"search.population": 1}), "search.population"),
    bad_recipe("seed-not-int", recipe({"seed": "abc"}), "seed", "integer"),
    bad_recipe("cpu-zero", recipe({"resources.cpu": 0}), "resources.cpu"),
    bad_recipe("gpu-negative", recipe({"resources.gpu": -1}), "resources.gpu"),
    refused_by_preflight(
        "cpu-more-than-this-machine",
        recipe({"resources.cpu": (os.cpu_count() or 1) + 6}),
        "resources.cpu",
        "no trial could ever start",
        within=15.0,
    ),
    refused_by_preflight(
        "gpu-more-than-this-machine",
        recipe({"resources.gpu": torch.cuda.device_count() + 1}),
        "resources.gpu",
        "GPU(s) visible to torch",
    ),
    Case(
        "output-not-a-string",
        ["run", "<tmp>/r.yaml", "--dry-run", "--no-estimate"],
        ("r.yaml", "output", "string"),
        files={"r.yaml": recipe({"output": 5})},
    ),
    bad_recipe("data-section-a-list", recipe({"data": ["photo"]}), "data"),
    # objectives
    bad_recipe(
        "objective-unknown",
        recipe({"search.objectives": {"accuracy": "max"}}),
        "unknown objective 'accuracy'",
    ),
    bad_recipe(
        "objective-direction",
        recipe({"search.objectives": {"source_val_acc": "up"}}),
        "search.objectives.source_val_acc",
        "'max' or 'min'",
    ),
    bad_recipe("objectives-empty", recipe({"search.objectives": {}}), "search.objectives", "at least one"),
    bad_recipe(
        "objective-select-of-the-source",
        recipe({"search.objectives": {"select/photo": "max"}}),
        "select/photo",
        "select domains: sketch",
    ),
    bad_recipe(
        "objectives-a-list",
        recipe({"search.objectives": ["source_val_acc"]}),
        "search.objectives",
        "dictionary",
    ),
    # scheduler
    bad_recipe(
        "scheduler-kind", recipe({"search.scheduler.kind": "hyperband"}), "search.scheduler.kind", "asha"
    ),
    bad_recipe(
        "scheduler-two-metrics",
        recipe({"search.scheduler": {"kind": "asha", "metric": ["source_val_acc", "target_select_acc"]}}),
        "search.scheduler.metric",
        "one metric name",
    ),
    bad_recipe(
        "scheduler-unknown-metric",
        recipe({"search.scheduler": {"kind": "asha", "metric": "accuracy"}}),
        "search.scheduler.metric",
        "accuracy",
    ),
    bad_recipe(
        "scheduler-metric-select-of-no-select-domain",
        recipe({"search.scheduler": {"kind": "asha", "metric": "select/art"}}),
        "search.scheduler.metric: 'select/art' names no select domain",
    ),
    bad_recipe(
        "scheduler-grace-zero", recipe({"search.scheduler.grace_period": 0}), "search.scheduler.grace_period"
    ),
    bad_recipe(
        "scheduler-reduction-one",
        recipe({"search.scheduler.reduction_factor": 1}),
        "search.scheduler.reduction_factor",
        "greater than 1",
    ),
    bad_recipe("scheduler-mode", recipe({"search.scheduler.mode": "maximize"}), "search.scheduler.mode"),
    # domain names and the selection protocol
    refused_by_preflight(
        "source-not-a-domain", recipe({"data.source": "nosuch"}), "no domain 'nosuch'", "art, photo, sketch"
    ),
    refused_by_preflight("select-not-a-domain", recipe({"data.select": ["nosuch"]}), "no domain 'nosuch'"),
    refused_by_preflight("test-not-a-domain", recipe({"data.test": ["nosuch"]}), "no domain 'nosuch'"),
    refused_by_preflight(
        "source-a-class-folder", recipe({"data.source": "photo/cat"}), "no domain 'photo/cat'"
    ),
    bad_recipe(
        "synthetic-unknown-domain",
        recipe({"data": {"source": "wood"}}),
        "data",
        "unknown synthetic domain 'wood'",
    ),
    bad_recipe(
        "derived-unknown-corruption", recipe({"data.select": ["sketch+fogg@3"]}), "unknown corruption 'fogg'"
    ),
    bad_recipe("derived-severity-9", recipe({"data.select": ["sketch+fog@9"]}), "severity must be 1-5"),
    bad_recipe("derived-malformed", recipe({"data.select": ["sketch+fog"]}), "base+corruption@severity"),
    bad_recipe(
        "derived-mapping-bad-keys",
        recipe({"data.select": [{"base": "sketch", "corr": "fog"}]}),
        "data.select",
        "{base, corruption, severity}",
    ),
    bad_recipe("select-empty", recipe({"data.select": []}), "data", "select needs at least one"),
    bad_recipe(
        "source-also-select", recipe({"data.select": ["photo"]}), "source domain 'photo' cannot also be"
    ),
    bad_recipe(
        "dataset-unknown", recipe({"data.dataset": "imagenet"}), "data.dataset", "'synthetic' or 'folder'"
    ),
    bad_recipe("folder-without-root", recipe({"data.root": DELETE}), "data", "needs root"),
    bad_recipe("folder-without-source", recipe({"data.source": DELETE}), "data", "needs source"),
    bad_recipe(
        "oracle-misuse-select-is-test",
        recipe({"data.test": ["sketch"]}),
        "'sketch' is both select and test",
        "selection: oracle",
    ),
    bad_recipe("selection-unknown", recipe({"data.selection": "cheat"}), "data.selection", "'oracle'"),
    bad_recipe("address-without-port", recipe({"ray.address": "nohost"}), "ray.address", "host:port"),
]

SPACES = [
    bad_recipe("space-param-type", space_recipe(param(type="double")), "search.space", "params.x.type"),
    bad_recipe("space-float-without-high", space_recipe(param(type="float", low=0)), "needs low and high"),
    bad_recipe(
        "space-low-above-high",
        space_recipe(param(type="float", low=1.0, high=0.0, path="norm.ibn.ratio")),
        "params.x",
        "low 1.0 is above high 0.0",
    ),
    bad_recipe("space-log-low-zero", space_recipe(param(type="float", low=0, high=1, log=True)), "log scale"),
    bad_recipe(
        "space-log-and-step",
        space_recipe(param(type="float", low=0.1, high=1, log=True, step=0.1)),
        "log with step",
    ),
    bad_recipe("space-int-step-half", space_recipe(param(type="int", low=0, high=4, step=0.5)), "integer"),
    bad_recipe("space-categorical-no-choices", space_recipe(param(type="categorical")), "non-empty choices"),
    bad_recipe("space-bool-with-choices", space_recipe(param(type="bool", choices=[1])), "choices belong"),
    bad_recipe(
        "space-categorical-with-low",
        space_recipe(param(type="categorical", choices=[1], low=0)),
        "low/high/step",
    ),
    bad_recipe("space-step-zero", space_recipe(param(type="float", low=0, high=1, step=0)), "params.x.step"),
    bad_recipe(
        "space-when-unknown-target",
        space_recipe(param(type="bool", when={"ghost": True})),
        "params.x.when",
        "'ghost' must be a parameter defined above",
    ),
    bad_recipe(
        "space-when-impossible-value",
        space_recipe({"params": {"a": {"type": "bool"}, "b": {"type": "bool", "when": {"a": 3}}}}),
        "params.b.when",
        "a=3 is not a value",
    ),
    bad_recipe(
        "space-sets-unknown-choice",
        space_recipe(param(type="categorical", choices=["a"], sets={"z": {"norm.default": "in"}})),
        "sets: 'z' is not one of the choices",
    ),
    bad_recipe(
        "space-path-not-in-archconfig",
        space_recipe(param(type="float", low=0, high=1, path="norm.ibn.ratioo")),
        "norm.ibn.ratioo",
        "did you mean 'ratio'",
    ),
    bad_recipe(
        "space-path-through-a-value",
        space_recipe(param(type="bool", path="norm.default.x")),
        "norm.default",
        "is not a mapping",
    ),
    bad_recipe(
        "space-fixed-unknown-path",
        space_recipe({"fixed": {"norm.foo": 1}}),
        "norm.foo",
        "unknown key",
    ),
    bad_recipe(
        "space-fixed-gn-groups-12",
        space_recipe({"fixed": {"norm.default": "gn:groups=12"}}),
        "groups=12",
        "16 channels",
    ),
    bad_recipe(
        "space-xbn-groups-12",
        space_recipe({"fixed": {"norm.xbn.groups": 12}}),
        "norm.xbn.groups",
        "groups=12 does not divide the 16 channels",
    ),
    bad_recipe(
        "space-ratio-range-beyond-one",
        space_recipe(param(type="float", low=0, high=2, path="norm.ibn.ratio")),
        "norm.ibn.ratio",
        "less than or equal to 1",
    ),
    bad_recipe(
        "space-sets-stage-out-of-range",
        space_recipe(param(type="categorical", choices=["s"], sets={"s": {"norm.ibn.stages": [5]}})),
        "norm.ibn.stages",
        "stage 5 out of range",
    ),
    bad_recipe("space-typo-parms", space_recipe({"parms": {}}), "parms", "did you mean 'params'"),
    bad_recipe(
        "space-typo-choises",
        space_recipe(param(type="categorical", choises=[1])),
        "params.x.choises",
        "did you mean 'choices'",
    ),
    bad_recipe(
        "space-requires-bottleneck",
        space_recipe({"requires": {"block": "bottleneck"}}),
        "requires block=bottleneck",
        "block=basic",
    ),
    bad_recipe("space-name-unknown", space_recipe("nosuch_space"), "no space file 'nosuch_space'"),
    bad_recipe("space-an-integer", space_recipe(5), "search.space"),
    bad_recipe(
        "space-sets-unknown-norm-kind",
        space_recipe(param(type="categorical", choices=["a"], sets={"a": {"norm.default": "foo"}})),
        "unknown normalizer kind 'foo'",
    ),
    bad_recipe(
        "space-sets-bad-spec-parameter",
        space_recipe(param(type="categorical", choices=["a"], sets={"a": {"norm.default": "ibn:ratio=abc"}})),
        "parameter 'ratio' must be",
    ),
    bad_recipe(
        "grid-on-continuous-space",
        space_recipe(param(type="float", low=0, high=1, path="norm.ibn.ratio")),
        "search.algorithm: grid needs a finite space",
    ),
    Case(
        "space-file-named-by-recipe-when-target",
        RUN,
        ("s.yaml", "params.b.when", "'ghost'"),
        files={
            "s.yaml": "params:\n  b: {type: bool, when: {ghost: true}}\n",
            "r.yaml": space_recipe("s.yaml"),
        },
    ),
    Case("spaces-validate-missing-file", ["spaces", "validate", "<tmp>/none.yaml"], ("none.yaml",)),
    bad_space_file("spaces-validate-yaml-syntax", "params: {x: [\n", "cannot parse"),
    bad_space_file(
        "spaces-validate-low-above-high",
        "params:\n  x: {type: int, low: 5, high: 1, path: backbone.num_classes}\n",
        "params.x",
        "low 5.0 is above high 1.0",
    ),
    bad_space_file("spaces-validate-top-level-list", "- x\n", "expected a mapping"),
    bad_space_file(
        "spaces-validate-override-slot-missing",
        "fixed:\n  norm.overrides: {layer9.0.bn1: in}\n",
        "norm.overrides",
        "no slot 'layer9.0.bn1'",
    ),
    Case(
        "spaces-validate-against-recipe-requires",
        ["spaces", "validate", "xbn_position", "--recipe", "<good>"],
        ("requires block=bottleneck",),
    ),
]

ARCHS = [
    Case("plan-missing-file", ["plan", "<tmp>/none.yaml"], ("none.yaml", "no such file")),
    bad_arch("arch-yaml-syntax", "norm: [1, 2\n", "cannot parse"),
    bad_arch("arch-unknown-kind", "norm: {default: foo}\n", "norm.default", "unknown normalizer kind 'foo'"),
    bad_arch(
        "arch-ibn-ratio-1.5", "norm: {ibn: {ratio: 1.5}}\n", "norm.ibn.ratio", "less than or equal to 1"
    ),
    bad_arch("arch-ibn-ratio-negative", "norm: {ibn: {ratio: [-0.1, 0.5]}}\n", "norm.ibn.ratio"),
    bad_arch(
        "arch-ibn-stage-zero", "norm: {ibn: {stages: [0]}}\n", "norm.ibn.stages", "stage 0 out of range"
    ),
    bad_arch("arch-ibn-stage-four", "norm: {ibn: {stages: [4]}}\n", "stage 4 out of range", "stages 1-3"),
    bad_arch(
        "arch-ibn-ratio-count",
        "norm: {ibn: {ratio: [0.5, 0.5, 0.5], stages: [1, 2]}}\n",
        "norm.ibn.ratio",
        "3 ratios for 2 stages",
    ),
    bad_arch(
        "arch-override-slot-missing", "norm: {overrides: {layer1.0.bn9: in}}\n", "no slot 'layer1.0.bn9'"
    ),
    bad_arch("arch-override-kind-unknown", "norm: {overrides: {bn1: xx}}\n", "norm.overrides", "bn1", "'xx'"),
    bad_arch(
        "arch-override-gn-groups-5",
        "norm: {overrides: {bn1: 'gn:groups=5'}}\n",
        "norm.overrides.bn1",
        "groups=5",
    ),
    bad_arch(
        "arch-preset-unknown", "backbone: {preset: resnet9}\n", "backbone.preset", "unknown preset 'resnet9'"
    ),
    bad_arch(
        "arch-backbone-incomplete", "backbone: {block: basic}\n", "backbone", "missing: depths, widths, stem"
    ),
    bad_arch(
        "arch-depths-widths-mismatch",
        "backbone: {preset: resnet-mini, depths: [1, 1]}\n",
        "backbone",
        "same length",
    ),
    bad_arch("arch-block-unknown", "backbone: {preset: resnet-mini, block: dense}\n", "backbone.block"),
    bad_arch(
        "arch-switchable-choice-pair",
        "norm: {switchable: {mode: hard, choices: {bn1: in/xx}}}\n",
        "norm.switchable.choices",
        "'mean/var'",
    ),
    bad_arch(
        "arch-switchable-choice-not-sn-slot",
        "norm: {switchable: {mode: hard, stages: [1], stem: false, choices: {layer3.0.bn1: in/bn}}}\n",
        "norm.switchable.choices",
        "'layer3.0.bn1' is not a SwitchNorm slot",
    ),
    bad_arch("arch-xbn-position-4", "norm: {xbn: {position: 4}}\n", "norm.xbn.position"),
    bad_arch(
        "arch-xbn-groups-12", "norm: {xbn: {groups: 12}}\n", "norm.xbn.groups", "groups=12 does not divide"
    ),
    bad_arch("arch-crossnorm-p-2", "norm: {crossnorm: {p: 2}}\n", "norm.crossnorm.p"),
    bad_arch("arch-crossnorm-mode", "norm: {crossnorm: {mode: bogus}}\n", "norm.crossnorm.mode", "'bogus'"),
    bad_arch("arch-selfnorm-form", "norm: {selfnorm: {form: bogus}}\n", "norm.selfnorm.form", "'bogus'"),
    bad_arch("arch-typo-nrom", "nrom: {}\n", "nrom", "did you mean 'norm'"),
    bad_arch("arch-input-batch", "norm: {input: batch}\n", "norm.input", "'instance'"),
    bad_arch(
        "arch-exported-arch-bad", "arch: {norm: {default: foo}}\nprovenance: {}\n", "unknown normalizer"
    ),
    Case("plan-json-syntax", ["plan", "<tmp>/a.json"], ("a.json", "cannot parse"), files={"a.json": "{'a'"}),
    Case(
        "train-arch-unknown-kind",
        ["train", "<tmp>/a.yaml", "--recipe", "<good>"],
        ("a.yaml", "norm.default", "unknown normalizer kind 'foo'"),
        files={"a.yaml": "norm: {default: foo}\n"},
    ),
    Case(
        "train-arch-stage-out-of-range",
        ["train", "<tmp>/a.yaml", "--recipe", "<good>"],
        ("a.yaml", "norm.crossnorm.stages", "stage 7 out of range"),
        files={"a.yaml": "backbone: {preset: resnet-mini}\nnorm: {crossnorm: {stages: [7]}}\n"},
    ),
    Case(
        "train-bad-recipe",
        ["train", "<tmp>/a.yaml", "--recipe", "<tmp>/r.yaml"],
        ("r.yaml", "train.epochs"),
        files={"a.yaml": "backbone: {preset: resnet-mini}\n", "r.yaml": recipe({"train.epochs": 0})},
    ),
    Case(
        "train-recipe-data-root-missing",
        ["train", "<tmp>/a.yaml", "--recipe", "<tmp>/r.yaml"],
        ("data root", "nowhere", "no such folder"),
        files={
            "a.yaml": "backbone: {preset: resnet-mini}\n",
            "r.yaml": recipe({"data.root": "<tmp>/nowhere"}),
        },
    ),
]


def break_image(relative: str) -> Callable[[Path], None]:
    return write(f"d/{relative}", b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")


DATA = [
    refused_by_preflight(
        "data-root-missing", recipe({"data.root": "<tmp>/nowhere"}), "data root", "no such folder"
    ),
    refused_by_preflight(
        "data-root-is-a-file", recipe({"data.root": "<tmp>/r.yaml"}), "data root", "no such folder"
    ),
    Case(
        "data-domain-missing",
        RUN,
        ("no domain 'sketch'", "art, photo"),
        setup=then(folder({"photo": {"cat": 10, "dog": 10}, "art": {"cat": 10, "dog": 10}})),
    ),
    Case(
        "data-file-where-a-domain-should-be",
        RUN,
        ("'sketch' is a file, not a domain folder",),
        setup=then(
            folder({"photo": {"cat": 10, "dog": 10}, "art": {"cat": 10, "dog": 10}}), write("d/sketch", "x")
        ),
    ),
    Case(
        "data-empty-class",
        RUN,
        ("class 'dog' of domain 'sketch' has no images",),
        setup=folder(
            {"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 0}, "art": {"cat": 10, "dog": 10}}
        ),
    ),
    Case(
        "data-class-of-text-files",
        RUN,
        ("class 'dog' of domain 'art' has no images",),
        setup=then(
            folder({"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 10}, "art": {"cat": 10}}),
            write("d/art/dog/notes.txt", "not an image"),
        ),
    ),
    Case(
        "data-mismatched-classes",
        RUN,
        ("have different classes", "'cow'"),
        setup=folder(
            {"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "cow": 10}, "art": {"cat": 10, "dog": 10}}
        ),
    ),
    Case(
        "data-domain-without-classes",
        RUN,
        ("domain 'art' has no class folders", "<root>/<domain>/<class>/<image>"),
        setup=then(
            folder({"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 10}}),
            lambda tmp: (tmp / "d" / "art").mkdir(),
        ),
    ),
    Case(
        "data-corrupt-png",
        RUN,
        ("broken.png", "unreadable image", "data.skip_unreadable"),
        setup=then(folder(), break_image("sketch/dog/broken.png")),
    ),
    Case(
        "data-every-image-corrupt-even-skipping",
        RUN,
        ("domain 'art' has no readable images",),
        setup=then(
            folder(
                {"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 10}},
                **{"data.skip_unreadable": True},
            ),
            break_image("art/cat/a.png"),
            break_image("art/dog/b.png"),
        ),
    ),
    Case(
        "data-one-image-per-class",
        RUN,
        ("domain 'photo' has 2 images", "split", "is empty", "data.val_fraction"),
        setup=folder({d: {"cat": 1, "dog": 1} for d in ("photo", "sketch", "art")}),
    ),
    Case(
        "data-too-few-images-in-the-source",
        RUN,
        ("domain 'photo'", "val split", "data.val_fraction"),
        setup=folder(
            {"photo": {"cat": 3, "dog": 3}, "sketch": {"cat": 10, "dog": 10}, "art": {"cat": 10, "dog": 10}}
        ),
    ),
    Case(
        "data-target-with-one-image",
        RUN,
        ("domain 'art'", "is empty"),
        setup=folder(
            {"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 10}, "art": {"cat": 1, "dog": 1}}
        ),
    ),
    Case(
        "data-source-derived-on-folder",
        RUN,
        ("source 'photo+fog@3'", "cannot be a source"),
        setup=folder(**{"data.source": "photo+fog@3"}),
    ),
    Case(
        "data-show-root-with-one-domain",
        ["data", "show", "<tmp>/d"],
        ("needs at least two domain folders",),
        setup=lambda tmp: domains(tmp / "d", {"photo": {"cat": 2}}),
    ),
    Case(
        "data-show-root-with-a-corrupt-image",
        ["data", "show", "<tmp>/d"],
        ("broken.png", "data.skip_unreadable"),
        setup=then(lambda tmp: domains(tmp / "d", GOOD_LAYOUT), break_image("art/cat/broken.png")),
    ),
    Case(
        "data-show-a-domain-folder-not-the-root",
        ["data", "show", "<data>/photo"],
        ("domain 'cat' has no class folders", "images lie loose"),
    ),
    Case("data-show-nowhere", ["data", "show", "<tmp>/nowhere"], ("nowhere", "not a recipe file")),
    Case(
        "data-show-bad-recipe",
        ["data", "show", "<tmp>/r.yaml"],
        ("r.yaml", "data.size"),
        files={"r.yaml": recipe({"data.size": 2})},
    ),
    Case("data-show-per-row-zero", ["data", "show", "<data>", "--per-row", "0"], ("--per-row",)),
]

GOOD_RUN = ["run", "<good>", "--dry-run", "--no-estimate", "--output", "<tmp>/out"]
EXPORT = ["export", "<run>", "-o", "<tmp>/x.yaml"]

FLAGS = [
    Case("run-unknown-option", [*GOOD_RUN, "--bogus"], ("No such option", "--bogus")),
    Case("run-missing-recipe", ["run"], ("Missing argument", "RECIPE")),
    Case("run-num-samples-not-int", [*GOOD_RUN, "--num-samples", "abc"], ("--num-samples", "valid integer")),
    Case("run-num-samples-zero", [*GOOD_RUN, "--num-samples", "0"], ("--num-samples",)),
    Case("run-max-concurrent-zero", [*GOOD_RUN, "--max-concurrent", "0"], ("--max-concurrent",)),
    Case(
        "run-output-without-value",
        ["run", "<good>", "--dry-run", "--no-estimate", "--output"],
        ("--output", "requires an argument"),
    ),
    Case(
        "set-unclosed-list",
        [*GOOD_RUN, "--set", "train.epochs=[1"],
        ("--set 'train.epochs=[1'", "not valid YAML"),
    ),
    Case(
        "set-without-equals", [*GOOD_RUN, "--set", "train.epochs"], ("--set 'train.epochs'", "key.path=value")
    ),
    Case("set-without-key", [*GOOD_RUN, "--set", "=5"], ("--set '=5'",)),
    Case(
        "set-out-of-range",
        [*GOOD_RUN, "--set", "train.epochs=0"],
        ("train.epochs", "greater than or equal to 1"),
    ),
    Case("set-typo", [*GOOD_RUN, "--set", "train.epoch=2"], ("train.epoch", "did you mean 'epochs'")),
    Case("set-into-a-value", [*GOOD_RUN, "--set", "name.x=1"], ("--set 'name.x=1'", "name is not a mapping")),
    Case("set-wrong-type", [*GOOD_RUN, "--set", "search.algorithm=[grid]"], ("search.algorithm",)),
    Case(
        "set-unknown-corruption",
        [*GOOD_RUN, "--set", "data.test=[art+smoke@2]"],
        ("unknown corruption 'smoke'",),
    ),
    Case(
        "address-refused",
        [*GOOD_RUN, "--address", "127.0.0.1:1"],
        ("ray.address 127.0.0.1:1", "nothing answers"),
        within=15.0,
    ),
    Case(
        "address-auto-without-cluster",
        [*GOOD_RUN, "--address", "auto"],
        ("ray.address auto", "no Ray cluster found"),
        patch=no_ray_cluster_here,
    ),
    Case("flag-address-without-port", [*GOOD_RUN, "--address", "nohost"], ("ray.address", "host:port")),
    Case(
        "address-port-not-a-number", [*GOOD_RUN, "--address", "localhost:abc"], ("ray.address localhost:abc",)
    ),
    Case(
        "num-samples-flag-into-a-search-that-is-no-mapping",
        ["run", "<tmp>/r.yaml", "--dry-run", "--no-estimate", "--num-samples", "3"],
        ("r.yaml", "search is not a mapping"),
        files={"r.yaml": recipe({"search": 5})},
    ),
    Case(
        "set-domain-name-like-rich-markup",
        [*GOOD_RUN, "--set", "data.source='[red]photo'"],
        ("no domain '[red]photo'",),
    ),
    Case(
        "set-domain-name-like-an-emoji-code",
        [*GOOD_RUN, "--set", "data.source='photo:smile:'"],
        ("no domain 'photo:smile:'",),
    ),
    Case("run-name-with-spaces", [*GOOD_RUN, "--name", "bad name"], ("name", "pattern")),
    Case(
        "constraint-malformed",
        [*GOOD_RUN, "--set", "search.constraints=['acc > 1']"],
        ("search.constraints", "'acc > 1'", "METRIC >= NUMBER"),
    ),
    Case(
        "constraint-unknown-metric",
        [*GOOD_RUN, "--set", "search.constraints=['acc >= 1']"],
        ("search.constraints", "unknown metric 'acc'"),
    ),
    Case(
        "constraint-with-random",
        [*GOOD_RUN, "--set", "search.algorithm=random", "--set", "search.constraints=['params <= 5']"],
        ("search.constraints", "use nsga2 or tpe"),
    ),
    Case(
        "warm-start-unknown",
        [*GOOD_RUN, "--set", "search.warm_start=xbn"],
        ("search.warm_start.kind", "'sn'"),
    ),
    Case(
        "warm-start-fix-above-range",
        [*GOOD_RUN, "--set", "search.warm_start={kind: sn, fix_above: 2}"],
        ("search.warm_start.fix_above", "less than or equal to 1"),
    ),
    Case(
        "reject-below-metric",
        [*GOOD_RUN, "--set", "search.scheduler.reject_below={value: 20, metric: foo}"],
        ("search.scheduler.reject_below.metric", "unknown metric 'foo'"),
    ),
    Case(
        "scheduler-kind-unknown",
        [*GOOD_RUN, "--set", "search.scheduler.kind=hyperband"],
        ("search.scheduler.kind", "moasha"),
    ),
    Case(
        "show-sort-unknown",
        ["show", "<run>", "--sort", "foo"],
        ("'--sort'", "'foo' is not one of 'target', 'source'"),
    ),
    Case("show-top-zero", ["show", "<run>", "--top", "0"], ("--top",)),
    Case("show-not-a-run", ["show", "<tmp>"], ("not a run folder",)),
    Case("show-missing-folder", ["show", "<tmp>/nowhere"], ("nowhere", "not a run folder")),
    Case(
        "show-run-with-corrupt-recipe",
        ["show", "<tmp>/run"],
        ("recipe.yaml", "cannot parse"),
        files={"run/recipe.yaml": "name: [x\n", "run/space.yaml": "params: {}\n"},
    ),
    Case(
        "show-run-without-records",
        ["show", "<tmp>/run"],
        ("trials.jsonl", "nothing has run yet"),
        files={"good.yaml": recipe()},
        setup=lambda tmp: make_run(tmp / "run", tmp / "good.yaml", records=False),
    ),
    Case("export-without-trial-or-pick", EXPORT, ("exactly one of --trial ID or --pick",)),
    Case("export-trial-and-pick", [*EXPORT, "--trial", "t000", "--pick", "knee"], ("exactly one of",)),
    Case("export-unknown-trial", [*EXPORT, "--trial", "t999"], ("--trial", "no trial 't999'", "t000")),
    Case("export-unknown-pick-rule", [*EXPORT, "--pick", "best"], ("--pick", "'best'", "knee")),
    Case("export-without-output", ["export", "<run>", "--trial", "t000"], ("Missing option", "--output")),
    Case(
        "export-max-source-drop-not-a-number",
        [*EXPORT, "--pick", "knee", "--max-source-drop", "abc"],
        ("--max-source-drop",),
    ),
    Case(
        "export-not-a-run",
        ["export", "<tmp>", "-o", "<tmp>/x.yaml", "--trial", "t000"],
        ("not a run folder",),
    ),
    Case("resume-not-a-run", ["resume", "<tmp>"], ("not a run folder",)),
    Case("resume-missing-folder", ["resume", "<tmp>/nowhere"], ("nowhere", "not a run folder")),
    Case(
        "bench-device-unknown",
        ["bench", "norms", "--device", "tpu"],
        ("'--device'", "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    ),
    Case("bench-shapes-malformed", ["bench", "norms", "--shapes", "4x8"], ("--shapes", "'4x8'")),
    Case("bench-repeats-too-few", ["bench", "norms", "--repeats", "1"], ("--repeats",)),
    Case(
        "bench-efficiency-search-seeds-zero",
        ["bench", "efficiency", "<good>", "--search-seeds", "0", "-o", "<tmp>/b"],
        ("--search-seeds",),
    ),
    Case(
        "bench-efficiency-continuous-space",
        ["bench", "efficiency", "<tmp>/r.yaml", "-o", "<tmp>/b"],
        ("r.yaml", "must be finite"),
        files={
            "r.yaml": space_recipe(param(type="float", low=0.0, high=1.0), **{"search.algorithm": "random"})
        },
    ),
    Case("unknown-command", ["fly"], ("No such command", "fly")),
    Case("plan-without-argument", ["plan"], ("Missing argument",)),
    Case("spaces-validate-without-argument", ["spaces", "validate"], ("Missing argument",)),
    Case("train-without-recipe", ["train", "<tmp>/a.yaml"], ("Missing option", "--recipe")),
    Case("train-seeds-zero", ["train", "<tmp>/a.yaml", "--recipe", "<good>", "--seeds", "0"], ("--seeds",)),
]

OUTPUTS = [
    Case(
        "output-is-a-file",
        ["run", "<good>", "--dry-run", "--no-estimate", "--output", "<tmp>/out"],
        ("is a file",),
        files={"out": "x"},
    ),
    Case(
        "output-unwritable-proc",
        ["run", "<good>", "--dry-run", "--no-estimate", "--output", "/proc/x"],
        ("/proc/x", "cannot create"),
    ),
    Case(
        "output-under-a-file",
        ["run", "<good>", "--dry-run", "--no-estimate", "--output", "<tmp>/f/out"],
        ("is a file, so no folder can be made",),
        files={"f": "x"},
    ),
    Case(
        "output-an-existing-run",
        ["run", "<good>", "--dry-run", "--no-estimate", "--output", "<run>"],
        ("already holds a run", "resume"),
    ),
    Case(
        "output-an-existing-run-no-dry-run", ["run", "<good>", "--output", "<run>"], ("already holds a run",)
    ),
    Case(
        "output-unwritable-from-recipe",
        ["run", "<tmp>/r.yaml", "--dry-run", "--no-estimate"],
        ("/proc/x", "cannot create"),
        files={"r.yaml": recipe({"output": "/proc/x"})},
    ),
    Case(
        "output-unwritable-from-set", ["run", "<good>", "--dry-run", "--set", "output=/proc/x"], ("/proc/x",)
    ),
    Case(
        "export-to-proc",
        ["export", "<run>", "-o", "/proc/x.yaml", "--trial", "t000"],
        ("/proc/x.yaml", "cannot write"),
    ),
    Case(
        "export-to-a-folder",
        ["export", "<run>", "-o", "<tmp>", "--trial", "t000"],
        ("cannot write", "is a folder"),
    ),
    Case(
        "export-under-a-file",
        ["export", "<run>", "-o", "<tmp>/f/x.yaml", "--trial", "t000"],
        ("x.yaml", "cannot write"),
        files={"f": "x"},
    ),
    Case(
        "pareto-plot-to-proc", ["pareto", "<run>", "--plot", "/proc/x.png"], ("/proc/x.png", "cannot write")
    ),
    Case(
        "pareto-html-to-proc", ["pareto", "<run>", "--html", "/proc/x.html"], ("/proc/x.html", "cannot write")
    ),
    Case("pareto-plot-to-a-folder", ["pareto", "<run>", "--plot", "<tmp>"], ("is a folder",)),
    Case(
        "data-show-grid-to-proc",
        ["data", "show", "<data>", "-o", "/proc/x.png"],
        ("/proc/x.png", "cannot write"),
    ),
    Case(
        "data-show-grid-under-a-file",
        ["data", "show", "<data>", "-o", "<tmp>/f/g.png"],
        ("g.png",),
        files={"f": "x"},
    ),
]

GOOD_LINES = recipe().splitlines()
TRAIN_LINE = GOOD_LINES.index("train:") + 1
EPOCHS_LINE = GOOD_LINES.index("  epochs: 1") + 1
SEED_MAX = 2**32 - 1
PAST = {  # key -> the first value past its bound
    "train.epochs": 10_001,
    "train.batch_size": 65_537,
    "train.pretrain_epochs": 10_001,
    "search.num_samples": 100_001,
    "search.max_concurrent": 1_025,
    "search.population": 100_001,
    "search.seed": SEED_MAX + 1,
    "search.failures.retries": 101,
    "search.warm_start.neighbours": 100_001,
    "seed": SEED_MAX + 1,
    "data.seed": SEED_MAX + 1,
    "resources.cpu": 1_025,
}


def png_header(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width × height pixels (the rest need not decode: the
    header is all a size check may read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def fifo(relative: str) -> Callable[[Path], None]:
    return lambda tmp: os.mkfifo(tmp / relative)


def unix_socket(relative: str) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(relative)  # relative: the case runs in <tmp>, and a socket path is at most 108 bytes

    return build


def symlink(relative: str, target: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / relative).symlink_to(target)


def encoded(codec: str, bom: bytes = b"") -> Callable[[Path], None]:
    """<tmp>/r.yaml in another encoding: the good recipe with an unknown key, so a decoded file is refused
    for its key (proof that it was read) and an undecodable one for its encoding."""

    def build(tmp: Path) -> None:
        text = recipe({"data.root": str(tmp / "d"), "train.epoch": 2})
        (tmp / "r.yaml").write_bytes(bom + text.encode(codec))

    return build


def run_with(*records: dict[str, Any]) -> Callable[[Path], None]:
    return lambda tmp: make_run(tmp / "run", tmp / "good.yaml", extra=records)


def unfinished(trial_id: str, status: str) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "status": status,
        "config": {"ibn": "none"},
        "arch": {"backbone": {"preset": "resnet-mini", "num_classes": 2}},
        "seed": 0,
        "epoch": 1,
        "final": status != "running",
        "reason": "diverged" if status == "failed" else "below the rung",
        "metrics": {"source_val_acc": 10.0, "epoch": 1},
    }


class Payload:
    """What an attacker plants as a weights file: unpickling it runs a shell command that creates MARKER in
    the case's folder (which the matrix's snapshot of <tmp> would then show)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def poisoned(relative: str, form: str = "torch-zip") -> Callable[[Path], None]:
    """<tmp>/relative holding the payload: a torch zip file whose data.pkl holds it, or a bare pickle."""

    def build(tmp: Path) -> None:
        import io
        import pickle

        content = {"state_dict": Payload(tmp / "MARKER")}
        buffer = io.BytesIO()
        if form == "pickle":
            pickle.dump(content, buffer)
        else:
            torch.save(content, buffer)
        (tmp / relative).write_bytes(buffer.getvalue())

    return build


WITH_WEIGHTS = {"model.backbone": {"preset": "resnet-mini", "num_classes": 2, "weights": "<tmp>/w.pt"}}
ARCH_FILE = {"a.yaml": "backbone: {preset: resnet-mini, num_classes: 2}\n"}

NAME_128 = "n" * 128
HOSTILE = [
    # duplicate keys: both line numbers, at the top level, nested, in a flow mapping, in JSON, in a space
    bad_recipe(
        "dup-key-top-level",
        recipe() + "train:\n  epochs: 2\n",
        f"duplicate key 'train' at lines {TRAIN_LINE} and {len(GOOD_LINES) + 1}",
    ),
    bad_recipe(
        "dup-key-nested",
        recipe().replace("  epochs: 1\n", "  epochs: 1\n  batch_size: 4\n  epochs: 3\n"),
        f"duplicate key 'epochs' at lines {EPOCHS_LINE} and {EPOCHS_LINE + 2}",
    ),
    bad_recipe(
        "dup-key-flow-mapping",
        "name: x\nsearch: {space: quickstart, space: joint}\n",
        "'space' at lines 2 and 2",
    ),
    bad_recipe(
        "dup-key-in-inline-space",
        space_recipe({"params": {"a": {"type": "bool"}}}).replace(
            "      a:\n", "      a:\n        type: bool\n", 1
        ),
        "duplicate key 'type'",
    ),
    Case(
        "dup-key-json",
        ["run", "<tmp>/r.json", "--dry-run", "--no-estimate", "--output", "<tmp>/out"],
        ("r.json", "duplicate key 'name'"),
        files={"r.json": '{"name": "a", "name": "b"}'},
    ),
    bad_space_file("dup-key-space-file", "params: {}\nfixed: {}\nparams: {}\n", "'params' at lines 1 and 3"),
    # booleans and strings are not numbers (YAML 1.1 reads yes/no/on/off as booleans)
    bad_recipe("epochs-true", recipe({"train.epochs": True}), "train.epochs", "got the bool true"),
    bad_recipe(
        "num-samples-yes",
        recipe().replace("num_samples: 2", "num_samples: yes"),
        "search.num_samples",
        "bool",
    ),
    bad_recipe(
        "batch-size-quoted", recipe({"train.batch_size": "8"}), "train.batch_size", "'8'", "without quotes"
    ),
    bad_recipe(
        "max-concurrent-on",
        recipe().replace("num_samples: 2", "num_samples: 2\n  max_concurrent: on"),
        "search.max_concurrent",
        "bool",
    ),
    bad_recipe("seed-false", recipe({"seed": False}), "r.yaml: seed:", "bool false"),
    bad_recipe("seed-quoted", recipe({"seed": "0"}), "r.yaml: seed:", "str '0'"),
    bad_recipe("search-seed-true", recipe({"search.seed": True}), "search.seed", "bool"),
    bad_recipe("data-size-quoted", recipe({"data.size": "8"}), "data.size", "str"),
    bad_recipe("lr-quoted", recipe({"train.lr": "0.1"}), "train.lr", "a number is needed"),
    bad_recipe("cpu-true", recipe({"resources.cpu": True}), "resources.cpu", "bool"),
    bad_recipe(
        "grace-period-quoted", recipe({"search.scheduler.grace_period": "1"}), "search.scheduler.grace_period"
    ),
    bad_recipe("retries-true", recipe({"search.failures.retries": True}), "search.failures.retries", "bool"),
    bad_recipe(
        "num-classes-quoted",
        recipe({"model.backbone": {"preset": "resnet-mini", "num_classes": "2"}}),
        "model.backbone.num_classes",
        "str '2'",
    ),
    bad_recipe(
        "space-low-quoted", space_recipe(param(type="float", low="0", high=1)), "search.space", "params.x.low"
    ),
    bad_recipe("max-pixels-true", recipe({"data.max_pixels": True}), "data.max_pixels", "bool"),
    # every bounded integer one past its bound, and the issue's own
    *[
        bad_recipe(
            f"past-bound-{key}",
            recipe({key: value}),
            key,
            "less than or equal to" if "train." not in key else "above the bound",
        )
        for key, value in PAST.items()
    ],
    bad_recipe("epochs-1e20", recipe({"train.epochs": 10**20}), "train.epochs", "allowed: 1 to 10000"),
    bad_recipe("epochs-1e20-float", recipe({"train.epochs": 1e20}), "train.epochs", "got the float 1e+20"),
    bad_recipe("epochs-fraction", recipe({"train.epochs": 1.5}), "train.epochs", "got the float 1.5"),
    bad_recipe("seed-1e20-float", recipe({"seed": 1e20}), "r.yaml: seed:", "got the float 1e+20"),
    Case("set-epochs-1e20", [*GOOD_RUN, "--set", "train.epochs=1e20"], ("train.epochs", "float 1e+20")),
    bad_recipe("seed-2-to-the-64", recipe({"seed": 2**64}), "seed", "4294967295"),
    Case(
        "seed-2-to-the-64-run-without-dry-run",
        ["run", "<tmp>/r.yaml", "--output", "<tmp>/out"],
        ("seed", "4294967295"),
        files={"r.yaml": recipe({"seed": 2**64})},
    ),
    bad_recipe("seed-minus-one", recipe({"seed": -1}), "seed", "greater than or equal to 0"),
    bad_recipe("data-seed-minus-one", recipe({"data.seed": -1}), "data.seed"),
    bad_recipe("max-pixels-zero", recipe({"data.max_pixels": 0}), "data.max_pixels"),
    # names: at most 128 characters, one path part
    bad_recipe("name-129-chars", recipe({"name": NAME_128 + "n"}), "name", "at most 128"),
    bad_recipe("name-5000-chars", recipe({"name": "n" * 5000}), "name", "at most 128"),
    bad_recipe("name-with-slash", recipe({"name": "a/b"}), "name", "pattern"),
    bad_recipe("name-dot-dot", recipe({"name": ".."}), "name", "pattern"),
    bad_recipe("name-leading-dash", recipe({"name": "-rf"}), "name", "pattern"),
    Case("flag-name-with-slash", [*GOOD_RUN, "--name", "../x"], ("name", "pattern")),
    # --set
    Case("set-empty-value", [*GOOD_RUN, "--set", "train.epochs="], ("--set 'train.epochs='", "no value")),
    Case("set-blank-value", [*GOOD_RUN, "--set", "train.epochs=  "], ("no value",)),
    Case("set-quoted-number", [*GOOD_RUN, "--set", "train.epochs='3'"], ("train.epochs", "str '3'")),
    Case("set-bool-for-int", [*GOOD_RUN, "--set", "search.num_samples=true"], ("search.num_samples", "bool")),
    Case("set-past-bound", [*GOOD_RUN, "--set", "seed=4294967296"], ("seed", "4294967295")),
    # encodings
    Case(
        "utf16-with-bom-is-read",
        RUN,
        ("r.yaml", "train.epoch", "did you mean 'epochs'"),
        setup=then(folder(), encoded("utf-16-le", b"\xff\xfe")),
    ),
    Case(
        "utf16-big-endian-with-bom-is-read",
        RUN,
        ("train.epoch",),
        setup=then(folder(), encoded("utf-16-be", b"\xfe\xff")),
    ),
    Case(
        "utf16-without-bom", RUN, ("r.yaml", "NUL bytes", "UTF-8"), setup=then(folder(), encoded("utf-16-le"))
    ),
    Case(
        "latin1-recipe",
        RUN,
        ("r.yaml", "not UTF-8", "offset"),
        setup=write("r.yaml", b"name: caf\xe9\n"),
    ),
    Case("png-as-recipe", RUN, ("r.yaml",), setup=write("r.yaml", png_header(8, 8))),
    Case(
        "recipe-too-large", RUN, ("r.yaml", "larger than 4 MiB"), setup=write("r.yaml", "# x\n" * (2**20 + 1))
    ),
    # FIFOs, sockets and devices where a recipe or a space is expected: refused by stat, never opened
    Case("recipe-is-a-fifo", RUN, ("r.yaml", "FIFO"), setup=fifo("r.yaml"), within=10),
    Case(
        "recipe-is-dev-zero", ["run", "/dev/zero", "--dry-run"], ("/dev/zero", "character device"), within=10
    ),
    Case("recipe-is-a-socket", RUN, ("r.yaml", "socket"), setup=unix_socket("r.yaml"), within=10),
    Case(
        "recipe-links-to-dev-zero",
        RUN,
        ("r.yaml", "character device"),
        setup=symlink("r.yaml", "/dev/zero"),
        within=10,
    ),
    Case(
        "space-file-is-a-fifo",
        RUN,
        ("s.yaml", "FIFO"),
        files={"r.yaml": space_recipe("s.yaml")},
        setup=fifo("s.yaml"),
        within=10,
    ),
    Case(
        "spaces-validate-dev-zero",
        ["spaces", "validate", "/dev/zero"],
        ("/dev/zero", "character device"),
        within=10,
    ),
    # FIFOs, sockets, devices, folders and bombs where an image is expected
    Case(
        "image-fifo-dry-run",
        RUN,
        ("x.png", "FIFO", "data.skip_unreadable"),
        setup=then(folder(), fifo("d/sketch/cat/x.png")),
        within=30,
    ),
    Case(
        "image-fifo-run",
        ["run", "<tmp>/r.yaml", "--output", "<tmp>/out"],
        ("x.png", "FIFO"),
        setup=then(folder(), fifo("d/photo/dog/x.png")),
        within=30,
    ),
    Case(
        "image-socket",
        RUN,
        ("x.png", "socket"),
        setup=then(folder(), unix_socket("d/art/cat/x.png")),
        within=30,
    ),
    Case(
        "image-dev-zero",
        RUN,
        ("x.png", "character device"),
        setup=then(folder(), symlink("d/art/cat/x.png", "/dev/zero")),
        within=30,
    ),
    Case(
        "image-a-folder",
        RUN,
        ("x.png", "folder"),
        setup=then(folder(), lambda tmp: (tmp / "d/art/dog/x.png").mkdir()),
        within=30,
    ),
    Case(
        "image-30000-square-header",
        RUN,
        ("big.png", "data.max_pixels 50000000"),
        setup=then(folder(), write("d/photo/cat/big.png", png_header(30000, 30000))),
        within=30,
    ),
    Case(
        "image-just-past-max-pixels",
        RUN,
        ("data.max_pixels 63",),
        setup=folder(**{"data.max_pixels": 63}),
        within=30,
    ),
    Case(
        "image-every-one-past-max-pixels-skipped",
        RUN,
        ("domain 'art' has no readable images",),
        setup=then(
            folder(
                {"photo": {"cat": 10, "dog": 10}, "sketch": {"cat": 10, "dog": 10}},
                **{"data.skip_unreadable": True},
            ),
            write("d/art/cat/a.png", png_header(10000, 10000)),
            write("d/art/dog/b.png", png_header(8000, 8000)),
        ),
        within=30,
    ),
    # space paths: a folder part means that file; a bare name a file beside the recipe or a shipped space
    bad_recipe(
        "space-absolute-path-missing",
        space_recipe("/nonexistent/dir/ibn_ratio.yaml"),
        "no space file '/nonexistent/dir/ibn_ratio.yaml'",
    ),
    bad_recipe(
        "space-relative-path-missing",
        space_recipe("spaces/quickstart.yaml"),
        "no space file 'spaces/quickstart.yaml'",
    ),
    bad_recipe(
        "space-bare-name-missing", space_recipe("quickstartt"), "no space file 'quickstartt'", "quickstart"
    ),
    Case(
        "space-path-a-folder", RUN, ("sp", "is a folder"), files={"r.yaml": space_recipe("./sp"), "sp/x": "x"}
    ),
    bad_recipe("space-path-dev-zero", space_recipe("/dev/zero"), "/dev/zero", "character device"),
    # a weights file is read with weights_only=True: a planted pickle runs nothing, a FIFO is never opened
    Case(
        "weights-poisoned-torch-zip",
        RUN,
        ("w.pt", "unsupported GLOBAL posix.system", "nothing in it was loaded"),
        files={"r.yaml": recipe(WITH_WEIGHTS)},
        setup=poisoned("w.pt"),
    ),
    Case(
        "weights-poisoned-bare-pickle",
        RUN,
        ("w.pt", "cannot read as a checkpoint", "nothing in it was loaded"),
        files={"r.yaml": recipe(WITH_WEIGHTS)},
        setup=poisoned("w.pt", "pickle"),
    ),
    Case(
        "weights-fifo",
        RUN,
        ("w.pt", "not a regular file"),
        files={"r.yaml": recipe(WITH_WEIGHTS)},
        setup=fifo("w.pt"),
        within=10,
    ),
    Case(
        "plan-weights-poisoned",
        ["plan", "<tmp>/a.yaml", "--weights", "<tmp>/w.pt"],
        ("w.pt", "unsupported GLOBAL posix.system"),
        files=ARCH_FILE,
        setup=poisoned("w.pt"),
    ),
    # exporting a trial that did not complete needs --force
    Case(
        "export-failed-trial",
        ["export", "<tmp>/run", "-o", "<tmp>/x.yaml", "--trial", "t001"],
        ("trial t001 is failed", "--force"),
        files={"good.yaml": recipe()},
        setup=run_with(unfinished("t001", "failed")),
    ),
    Case(
        "export-pruned-trial",
        ["export", "<tmp>/run", "-o", "<tmp>/x.yaml", "--trial", "t002"],
        ("trial t002 is pruned", "--force"),
        files={"good.yaml": recipe()},
        setup=run_with(unfinished("t002", "pruned")),
    ),
]

CASES = [*RECIPES, *SPACES, *ARCHS, *DATA, *FLAGS, *OUTPUTS, *HOSTILE]


def make_run(path: Path, good: Path, records: bool = True, extra: tuple[dict[str, Any], ...] = ()) -> Path:
    """A run folder as `run` leaves it after one finished trial: the resolved recipe and space (written by
    the run folder's owner) and one complete trial's record; `extra` records follow it."""
    from normsearch.recipe import load_recipe
    from normsearch.run.folder import RunFolder

    recipe_, space = load_recipe(good)
    run = RunFolder.create(path, recipe_, space)
    if records:
        run.append(
            {
                "trial_id": "t000",
                "status": "complete",
                "config": {"ibn": "half"},
                "arch": space.to_arch(recipe_.model, {"ibn": "half"}).to_dict(),
                "seed": 0,
                "epoch": 1,
                "final": True,
                "metrics": {"source_val_acc": 90.0, "target_select_acc": 60.0, "epoch": 1, "final": True},
                "test": {"art": 55.0},
            }
        )
        for record in extra:
            run.append(record)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The good image folder and recipe, a finished run, and an image cache of the module's own."""
    base = tmp_path_factory.mktemp("bad_inputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMSEARCH_CACHE", str(base / "cache"))
        data = domains(base / "data", GOOD_LAYOUT)
        good = base / "good.yaml"
        good.write_text(recipe().replace("<data>", str(data)))
        run = make_run(base / "run", good)
        yield {"data": data, "good": good, "run": run}


class Hung(BaseException):
    """Raised by the alarm; a BaseException so that CliRunner does not swallow it as the command's own."""


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `folder`."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def test_the_matrix_is_large_and_its_ids_distinct() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)


def test_the_good_recipe_passes_every_check(world: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """The matrix's bad inputs are small edits of this one: it must pass, so each case fails on its edit."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["run", str(world["good"]), "--dry-run", "--no-estimate", "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.stdout and not (tmp_path / "out").exists()
    shown = runner.invoke(app, ["show", str(world["run"])])
    assert shown.exit_code == 0 and "t000" in shown.stdout, shown.output


def test_dry_run_announces_the_trials_a_small_grid_holds(world: dict[str, Path], tmp_path: Path) -> None:
    """`--num-samples 50` on a grid of 5 configurations trains 5 (none twice), and the dry run says 5."""
    ratio = {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "path": "norm.ibn.ratio"}
    five = {"params": {"ratio": ratio}}
    path = tmp_path / "r.yaml"
    path.write_text(space_recipe(five).replace("<data>", str(world["data"])))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", str(path), "--dry-run", "--no-estimate", "--num-samples", "50", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "; 5 trial(s) (the space holds 5; no configuration is trained twice)" in said
    assert "trials: 5" in said and "50 trial" not in said and not out.exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_and_exit_2(
    case: Case, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fill(text: str) -> str:
        for key, value in (("tmp", tmp_path), *world.items()):
            text = text.replace(f"<{key}>", str(value))
        return text

    monkeypatch.chdir(tmp_path)
    for relative, text in case.files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fill(text))
    if case.setup is not None:
        case.setup(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    before = snapshot(tmp_path)
    run_before = snapshot(world["run"])

    def hung(signum: int, frame: Any) -> None:
        raise Hung(f"{case.id}: no answer within {case.within} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, case.within)
    tic = time.monotonic()
    try:
        result = runner.invoke(app, [fill(arg) for arg in case.args])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.monotonic() - tic

    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for words in case.expect:
        assert fill(words) in lines[0], f"{words!r} not in {lines[0]!r}"
    assert seconds < case.within, f"took {seconds:.1f} s"
    # Nothing written: no run folder (at --output or the default runs/), no stray file, no folder; and an
    # existing run is left exactly as it was.
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").is_dir() and not (tmp_path / "runs").exists()
    assert snapshot(world["run"]) == run_before


def test_force_exports_a_failed_trial(world: dict[str, Path], tmp_path: Path) -> None:
    """The refusal in `export-failed-trial` is a guard, not a wall: `--force` writes the configuration."""
    good = tmp_path / "good.yaml"
    good.write_text(recipe().replace("<data>", str(world["data"])))
    run_with(unfinished("t001", "failed"))(tmp_path)
    out = tmp_path / "x.yaml"
    result = runner.invoke(
        app, ["export", str(tmp_path / "run"), "--trial", "t001", "-o", str(out), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["provenance"]["trial"] == "t001"


def test_dry_run_says_which_space_file_it_took(world: dict[str, Path], tmp_path: Path) -> None:
    """A bare name is the file beside the recipe when there is one, else the shipped space: the dry run
    names the file either way."""
    mine = tmp_path / "quickstart.yaml"
    mine.write_text(yaml.safe_dump(GOOD["search"]["space"]))
    path = tmp_path / "r.yaml"
    for spec, expected in (("quickstart.yaml", mine), ("nosuch", None)):
        path.write_text(space_recipe(spec).replace("<data>", str(world["data"])))
        result = runner.invoke(
            app, ["run", str(path), "--dry-run", "--no-estimate", "--output", str(tmp_path / "out")]
        )
        if expected is None:
            assert result.exit_code == 2 and "no space file 'nosuch'" in result.stderr
            continue
        assert result.exit_code == 0, result.output
        said = "".join(result.stdout.split())  # the table wraps long paths
        assert "spacefile" in said and "".join(str(expected).split()) in said
