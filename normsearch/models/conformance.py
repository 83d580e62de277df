"""Conformance of one network by source: do slots, plans, inserts, export and rebuild all work on it?

`check_network(backbone)` runs, at `size` px on the CPU with random weights:

1. the Structure: slots found (with stage, unit, position), or "no normalization slots";
2. an all-BN plan keeps the network's eval outputs bit for bit (same weights), and so does all-BN plus a
   CrossNorm at every unit (CrossNorm is the identity in eval), which exercises the graph rewrite;
3. IBN-a, Switchable Norm and all-GroupNorm plans build and run forward and backward without NaN;
4. export then rebuild is strict: a plan with inserted modules (IBN-b), one SGD step, its state_dict
   loaded strictly into a network rebuilt from the exported YAML, equal eval outputs.

The conformance test runs it on one model per family; `scripts/sweep_networks.py` on every builder
torchvision registers.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.models import build_model


@dataclass
class Conformance:
    """What `check_network` found for one network: a status per check, and why a check failed."""

    name: str
    family: str = ""
    slots: int = 0
    units: int = 0
    stages: int = 0
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok" | "skipped: why" | "FAIL: why"
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not any(v.startswith("FAIL") for v in self.checks.values())


def _gn_groups(channels: list[int]) -> int:
    """The largest group count up to 32 that divides every slot's channels."""
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    return max(d for d in range(1, min(g, 32) + 1) if g % d == 0)


def _step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    out = model(x)
    out = out if isinstance(out, torch.Tensor) else out[0]
    if not torch.isfinite(out).all():
        raise NormsearchError("non-finite output in training")
    out.float().square().mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise NormsearchError(f"non-finite gradient in {bad[0]}")


def _eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]


def _outcome(fn: Callable[[], None]) -> str:
    """``ok``, or FAIL with what broke: a conformance report names it instead of stopping."""
    try:
        fn()
    except NormsearchError as error:
        return f"FAIL: {str(error)[:200]}"
    except Exception as error:
        return f"FAIL: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return "ok"


def check_network(backbone: dict[str, Any], size: int = 64, name: str | None = None) -> Conformance:
    """Run the conformance checks on the network `backbone` describes (see the module docstring)."""
    tic = time.perf_counter()
    base = ArchConfig.from_dict({"backbone": backbone})
    result = Conformance(name or next(iter(backbone.values())))
    structure = base.structure()
    result.family, result.slots, result.units = structure.family, len(structure.slots), len(structure.units)
    result.stages = structure.num_stages
    if not structure.slots:
        result.checks["slots"] = "no normalization slots"
        result.seconds = time.perf_counter() - tic
        return result
    result.checks["slots"] = "ok" if structure.traced else f"ok (untraced: {structure.note})"
    x = torch.randn(2, base.backbone.in_channels, size, size, generator=torch.Generator().manual_seed(0))

    def run(check: str, fn: Callable[[], None]) -> None:
        result.checks[check] = _outcome(fn)

    reference: list[nn.Module] = []

    def same_outputs(norm: dict[str, Any]) -> None:
        if not reference:
            torch.manual_seed(0)
            reference.append(build_model(base).eval())
        state = reference[0].state_dict()
        planned = ArchConfig.from_dict({"backbone": backbone, "norm": norm})
        torch.manual_seed(1)
        model = build_model(planned)
        model.load_state_dict(state, strict=True)
        if not torch.equal(_eval(reference[0], x), _eval(model, x)):
            raise NormsearchError("eval outputs differ from the network's own")

    def trains(norm: dict[str, Any]) -> None:
        torch.manual_seed(0)
        _step(build_model(ArchConfig.from_dict({"backbone": backbone, "norm": norm})), x)

    def rebuilds() -> None:
        import yaml

        arch = ArchConfig.from_dict({"backbone": backbone, "norm": {"ibn": {"variant": "b"}}})
        torch.manual_seed(0)
        model = build_model(arch)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        _step(model, x)
        opt.step()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        again = ArchConfig.from_dict(yaml.safe_load(arch.to_yaml()))
        torch.manual_seed(1)
        rebuilt = build_model(again)
        rebuilt.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())), strict=True)
        if not torch.equal(_eval(model, x), _eval(rebuilt, x)):
            raise NormsearchError("the rebuilt network's eval outputs differ")

    channels = [s.channels for s in structure.slots.values()]
    with_units = structure.traced and bool(structure.units)
    run("all-BN bit for bit", lambda: same_outputs({}))
    if with_units and any("residual" in u.positions for u in structure.units):
        run("inserts bit for bit", lambda: same_outputs({"crossnorm": {"position": "residual"}}))
    else:
        result.checks["inserts bit for bit"] = "skipped: no units to insert into"
    if with_units:
        run("IBN-a trains", lambda: trains({"ibn": {}}))
        run("SN trains", lambda: trains({"switchable": {}}))
    else:
        every = {s: "sn" for s in structure.slots}
        result.checks["IBN-a trains"] = "skipped: no units (per-slot plans only)"
        run("SN trains", lambda: trains({"overrides": every}))
    run("GN trains", lambda: trains({"default": f"gn:groups={_gn_groups(channels)}"}))
    if with_units and structure.stage_posts:
        run("export-rebuild strict", rebuilds)
    else:
        result.checks["export-rebuild strict"] = "skipped: no stage outputs for IBN-b"
    result.seconds = time.perf_counter() - tic
    return result
