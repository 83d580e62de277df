"""`normsearch bench gpu`: one prepared check of whether a CUDA device is kept fed, as a Markdown table.

1. Every normalizer's train step (forward + backward) against BatchNorm2d's, same run, paired medians
   (`bench.norms`), at three shapes, in fp32 and bf16 (autocast), channels_last off and on. Target: each
   ≤ 1.5× BN.
2. The input pipeline (slice, augment, standardise) against the ResNet-18 and ResNet-50 train steps at
   224 px (bf16, channels_last): augmentation batched (`data.augment_batched`) and per image (transforms
   v2 in a loop), both on data resident on the device, and batched on data streamed from the host
   (`data.stream`). Target: the batched pipeline ≥ 3× the ResNet-50 step.
3. Trials sharing the device: `TRIALS` worker processes at once (what Ray runs for `resources.gpu: 0.25`:
   four processes on one device, each with its own CUDA context), each training ResNet-18 on the batched
   pipeline, against one alone; total images/s, and each trial's peak device memory beside the memory the
   preflight probe (`train.probe`) predicted for it. Target: four at 0.25 ≥ 2.5× one alone.

Without CUDA it is one line and exit 2; `--device cpu` runs the same code paths at toy sizes (the test
suite does), whose numbers mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.bench.norms import CASES, paired_median_ms, step_timers
from normsearch.data.pipeline import AugmentConfig, Standardizer, balanced_batches, make_augment
from normsearch.data.stream import streamed_batches
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.norms import make_norm
from normsearch.train import CONTEXT_BYTES, autocast, probe_step_memory

NORM_SHAPES = ((64, 64, 56, 56), (64, 256, 14, 14), (64, 512, 7, 7))
TRIALS = 4
TARGET_NORM = 1.5
TARGET_PIPELINE = 3.0
TARGET_SHARING = 2.5


@dataclass(frozen=True)
class Sizes:
    """What is measured: full sizes on CUDA, toy ones for `--device cpu`."""

    norm_shapes: tuple[tuple[int, int, int, int], ...]
    models: tuple[str, ...]
    size: int
    batch: int
    images: int
    steps: int
    trials: int
    repeats: int
    norm_cases: int | None = None  # how many of bench.norms' cases (None: all)

    @classmethod
    def for_device(cls, device: torch.device) -> Sizes:
        if device.type == "cuda":
            return cls(NORM_SHAPES, ("resnet18", "resnet50"), 224, 128, 1024, 30, TRIALS, 20)
        return cls(((4, 16, 8, 8),), ("resnet-mini",), 32, 8, 32, 2, 2, 2, norm_cases=2)


@dataclass
class GpuBench:
    """The measurements, in table order."""

    device: str
    norms: list[tuple[str, str, str, bool, float]] = field(default_factory=list)  # label shape prec cl ratio
    pipeline: list[tuple[str, float]] = field(default_factory=list)  # what, images/s
    sharing: dict[str, float] = field(default_factory=dict)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (peak GiB, probed GiB) per trial


def require_cuda(device: str) -> torch.device:
    """The device to benchmark; CUDA asked for where there is none is one line (exit 2)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NormsearchError(
            "bench gpu: no CUDA device here (torch.cuda.is_available() is False); run it where there is "
            "one (--device cpu runs its code paths at toy sizes)"
        )
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _autocast(fn, dev: torch.device, precision: str):
    def run() -> None:
        with autocast(dev, precision):
            fn()

    return run


def bench_norm_steps(dev: torch.device, sizes: Sizes) -> list[tuple[str, str, str, bool, float]]:
    """Each normalizer's train step over BatchNorm2d's at every shape, precision and layout."""
    rows = []
    for shape in sizes.norm_shapes:
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                x = torch.randn(shape, device=dev).to(memory_format=fmt)
                base = step_timers(nn.BatchNorm2d(shape[1]).to(dev), x)[0]
                for label, spec in CASES[1:][: sizes.norm_cases]:
                    if spec.startswith("gn"):
                        spec = f"gn:groups={min(16, shape[1])}"
                    torch.manual_seed(0)
                    step = step_timers(make_norm(spec, shape[1]).to(dev), x)[0]

                    timed, based = _autocast(step, dev, precision), _autocast(base, dev, precision)
                    _, _, ratio = paired_median_ms(timed, based, sizes.repeats, 3, dev)
                    rows.append((label, "×".join(map(str, shape)), precision, channels_last, ratio))
    return rows


def _model(preset: str, dev: torch.device) -> torch.nn.Module:
    arch = ArchConfig.model_validate({"backbone": {"preset": preset, "num_classes": 7}})
    return build_model(arch).to(dev, memory_format=torch.channels_last).train()


def train_step_rate(preset: str, dev: torch.device, sizes: Sizes) -> float:
    """Images/s of the preset's train step (bf16 autocast on CUDA, channels_last, SGD momentum)."""
    model = _model(preset, dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(sizes.batch, 3, sizes.size, sizes.size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (sizes.batch,), device=dev)
    precision = "bf16" if dev.type == "cuda" else "fp32"
    times = []
    for k in range(sizes.steps + 3):
        tic = time.perf_counter()
        with autocast(dev, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(dev)
        if k >= 3:
            times.append(time.perf_counter() - tic)
    return sizes.batch / sorted(times)[len(times) // 2]


def pipeline_rates(dev: torch.device, sizes: Sizes) -> list[tuple[str, float]]:
    """Images/s of slicing, augmenting (DomainBed's) and standardising a batch: batched and per image on
    resident data, batched on streamed data."""
    g = torch.Generator().manual_seed(0)
    host = torch.randint(0, 256, (sizes.images, 3, sizes.size, sizes.size), generator=g, dtype=torch.uint8)
    labels = torch.arange(sizes.images) % 7
    resident = [(host.to(dev), labels.to(dev))]
    standardize = Standardizer(torch.full((3,), 0.5, device=dev), torch.full((3,), 0.25, device=dev))
    rates = []
    for name, engine, domains, fn in (
        ("batched, resident", "batched", resident, balanced_batches),
        ("per image, resident", "per_image", resident, balanced_batches),
        ("batched, streamed from the host", "batched", [(host, labels)], None),
    ):
        augment = make_augment(AugmentConfig(preset="domainbed", engine=engine), sizes.size)
        gen = torch.Generator().manual_seed(1)
        if fn is None:
            batches = streamed_batches(domains, sizes.batch, gen, augment, dev)
        else:
            batches = fn(domains, sizes.batch, gen, augment)
        count, tic = 0, None
        for k, (x, _) in enumerate(batches):
            standardize(x)
            if k == 0:  # the first batch warms up
                _sync(dev)
                tic = time.perf_counter()
                continue
            count += len(x)
            if k >= sizes.steps:
                break
        _sync(dev)
        rates.append((name, count / (time.perf_counter() - tic)))
    return rates


def worker(device: str, preset: str, size: int, batch: int, images: int, steps: int) -> dict[str, float]:
    """One trial: `steps` train steps of `preset` fed by the batched pipeline; images/s, peak GiB."""
    dev = torch.device(device)
    torch.set_num_threads(1)
    model = _model(preset, dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x_all = torch.randint(0, 256, (images, 3, size, size), generator=g, dtype=torch.uint8).to(dev)
    domains = [(x_all, (torch.arange(images) % 7).to(dev))]
    augment = make_augment(AugmentConfig(preset="domainbed", engine="batched"), size)
    standardize = Standardizer(torch.full((3,), 0.5, device=dev), torch.full((3,), 0.25, device=dev))
    precision = "bf16" if dev.type == "cuda" else "fp32"
    done, tic = 0, 0.0
    while done < steps + 2:
        for x, y in balanced_batches(domains, batch, g, augment):
            if done == 2:
                _sync(dev)
                tic = time.perf_counter()
            x = standardize(x).contiguous(memory_format=torch.channels_last)
            with autocast(dev, precision):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps + 2:
                break
    _sync(dev)
    rate = steps * batch / (time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    return {"images_per_s": rate, "peak_gib": peak}


def _workers(n: int, dev: torch.device, sizes: Sizes) -> list[dict[str, float]]:
    """`n` worker processes at once; their results."""
    args = [str(dev), sizes.models[0], str(sizes.size), str(sizes.batch), str(sizes.images), str(sizes.steps)]
    code = (
        "import json, sys; from normsearch.bench.gpu import worker; "
        "print(json.dumps(worker(*sys.argv[1:3], *map(int, sys.argv[3:]))))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        for _ in range(n)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise NormsearchError(f"bench gpu: a trial process failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def bench_sharing(dev: torch.device, sizes: Sizes) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Total images/s of `sizes.trials` trials at once against one alone, and each trial's peak device
    memory beside what the preflight probe predicts."""
    alone = _workers(1, dev, sizes)[0]["images_per_s"]
    shared = _workers(sizes.trials, dev, sizes)
    arch = ArchConfig.model_validate({"backbone": {"preset": sizes.models[0], "num_classes": 7}})
    probe = probe_step_memory(
        lambda: build_model(arch),
        sizes.batch,
        sizes.size,
        3,
        7,
        "bf16" if dev.type == "cuda" else "fp32",
        True,
        None,
    )
    probed = (probe.need - CONTEXT_BYTES) / 2**30
    total = sum(r["images_per_s"] for r in shared)
    summary = {"alone": alone, "together": total, "trials": sizes.trials, "speedup": total / alone}
    return summary, [(r["peak_gib"], probed) for r in shared]


def bench_gpu(device: str = "cuda") -> GpuBench:
    """Every measurement of the module docstring on `device`."""
    dev = require_cuda(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = Sizes.for_device(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run: toy sizes)"
    result = GpuBench(name)
    result.norms = bench_norm_steps(dev, sizes)
    result.pipeline = pipeline_rates(dev, sizes)
    for preset in sizes.models:
        result.pipeline.append((f"{preset} train step", train_step_rate(preset, dev, sizes)))
    result.sharing, result.memory = bench_sharing(dev, sizes)
    return result


def markdown(result: GpuBench) -> str:
    """The table (Markdown) with each target's verdict."""
    lines = [f"## normsearch bench gpu: {result.device}", "", "### Normalizer train step / BatchNorm2d", ""]
    lines += [
        "| normalizer | shape | precision | channels_last | × BN | ≤ 1.5× |",
        "|---|---|---|---|---:|---|",
    ]
    for label, shape, precision, cl, ratio in result.norms:
        ok = "yes" if ratio <= TARGET_NORM else "**no**"
        lines.append(f"| {label} | {shape} | {precision} | {'on' if cl else 'off'} | {ratio:.2f} | {ok} |")
    lines += ["", "### Input pipeline vs train step (images/s)", "", "| stage | images/s |", "|---|---:|"]
    lines += [f"| {what} | {rate:,.0f} |" for what, rate in result.pipeline]
    rates = dict(result.pipeline)
    step = [rate for what, rate in result.pipeline if what.endswith("train step")][-1]
    pipe = rates["batched, resident"]
    lines += [
        "",
        f"batched pipeline / slowest train step = {pipe / step:.1f}× (target ≥ {TARGET_PIPELINE:g}×)",
    ]
    s = result.sharing
    lines += [
        "",
        "### Trials sharing the device",
        "",
        f"| trials | total images/s | × one alone (target ≥ {TARGET_SHARING:g}×) |",
        "|---:|---:|---:|",
        f"| 1 | {s['alone']:,.0f} | 1.00 |",
        f"| {int(s['trials'])} | {s['together']:,.0f} | {s['speedup']:.2f} |",
        "",
        "| trial | peak device memory (GiB) | probe's count (GiB) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {k + 1} | {peak:.2f} | {probed:.2f} |" for k, (peak, probed) in enumerate(result.memory)]
    return "\n".join(lines)
