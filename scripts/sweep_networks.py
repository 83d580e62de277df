"""Sweep every classification builder torchvision registers through the conformance checks.

    PYTHONPATH=. python scripts/sweep_networks.py [--size 64] [--only NAME ...] [--json out.json]

For each `torchvision.models.list_models(module=torchvision.models)` builder: its family, slot/unit/stage
counts and each check of `normsearch.models.conformance.check_network` (ok / skipped / FAIL), then a summary:
how many pass, and which have no normalization slots. A network that does not run at `--size` px is
retried at 299 px (Inception v3's auxiliary head needs it in training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-params", type=float, default=250e6, help="skip the checks of larger networks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from normsearch.arch.sources import build_source, torchvision_names
    from normsearch.models.conformance import Conformance, check_network

    names = args.only or torchvision_names()
    rows = []
    started = time.perf_counter()
    for name in names:
        params = sum(p.numel() for p in build_source("torchvision", name, {}, 10, 3, "meta").parameters())
        if params > args.max_params:
            from normsearch.arch import ArchConfig

            structure = ArchConfig.from_dict({"backbone": {"torchvision": name}}).structure()
            result = Conformance(name, structure.family, len(structure.slots), len(structure.units))
            result.stages = structure.num_stages
            result.checks = {
                "slots": "ok",
                "checks": f"skipped: {params / 1e6:.0f}M parameters > --max-params",
            }
            rows.append(result)
            print(
                f"{name:28s} {'skipped':8s} {result.family:13s} slots {result.slots:4d} ({params / 1e6:.0f}M)"
            )
            continue
        result = check_network({"torchvision": name}, args.size, name)
        if not result.passed and any("size" in v or "shape" in v for v in result.checks.values()):
            result = check_network({"torchvision": name}, 299, name)
        rows.append(result)
        fails = {k: v for k, v in result.checks.items() if v.startswith("FAIL")}
        status = "no slots" if result.slots == 0 else ("pass" if result.passed else "FAIL")
        print(
            f"{name:28s} {status:8s} {result.family:13s} slots {result.slots:4d} units {result.units:3d} "
            f"stages {result.stages} {result.seconds:6.1f}s {fails or ''}",
            flush=True,
        )
    skipped = [r.name for r in rows if "checks" in r.checks]
    with_slots = [r for r in rows if r.slots and r.name not in skipped]
    passed = [r for r in with_slots if r.passed]
    none = [r.name for r in rows if not r.slots]
    seconds = time.perf_counter() - started
    print(f"\n{len(rows)} builders in {seconds:.0f} s: {len(passed)} of {len(with_slots)} with normalization")
    print(f"slots pass every check; {len(none)} have no normalization slots: {', '.join(none)}")
    if skipped:
        print(f"checks skipped for size: {', '.join(skipped)}")
    failed = [r.name for r in with_slots if not r.passed]
    if failed:
        print(f"failing: {', '.join(failed)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([r.__dict__ for r in rows], fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
