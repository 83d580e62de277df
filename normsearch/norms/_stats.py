"""The engine under IBN, SwitchNorm, CrossNorm and SelfNorm: a statistics-conditioned channel affine.

All four layers compute, per instance and channel, the mean and variance of a region of the map, turn
those (N, C) statistics into a scale and a shift by some small differentiable function, and apply

    y = (x - mu) · S + T        on the region the layer acts on (the identity elsewhere)

IBN/SN: ``S = gamma·r, T = beta + gamma·r·(mu_in - mu_mix)``; CrossNorm: ``S = sigma_B/sigma_A,
T = mu_B``; SelfNorm: ``S = g, T = f·mu``. `stat_affine(x, fn, params, regions)` does this in one
autograd Function: the small function `fn` runs under autograd on (N, C) tensors, and only the three
full-size steps are written by hand.

Why by hand (measured on CPU, one thread, against `nn.BatchNorm2d`): autograd through the eager formula
keeps a dozen N·C·H·W intermediates, `torch.var_mean` over H·W costs more than a whole BatchNorm train
step, a broadcast `addcmul` is not vectorised, and every fresh full-size tensor costs page faults on first
touch (with glibc's default allocator a (32, 64, 32, 32) IBN step spent half its time there). So:

- forward: a sum for the mean, one fresh tensor ``d = x - mu`` (two-pass, numerically stable), its
  squared norm for the variance, then ``d`` becomes ``y`` in place. One full-size allocation, like BN.
  Statistics of further whole-map regions are taken in cache-sized chunks, without a full temporary.
- backward: ``sum g`` and ``sum g·(x - mu)`` in one fused pass (the native BatchNorm backward kernel on the
  (1, N·C, H, W) view, which reads x and g without a temporary), autograd over the small graph, and one
  fresh ``gx = g·S + (x - mu)·a + b`` (the native BatchNorm inference kernel, then one in-place addcmul).
- the input is saved for backward, not a centred copy of it.
- a box (CrossNorm's crops) is a 0/1 mask over the whole map, not a slice: passes over a box slice run row
  by row (rows of 6 to 30 values on these maps) and cost 3-8x a pass over the whole contiguous map. Its
  sums are matrix-vector products with the mask, its centred terms are formed in cache-sized chunks of
  rows, and the output is ``x + mask·((x - mu)·(S - 1) + T - mu)``: the identity outside the box, and one
  fresh tensor per pass, as for the whole map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from normsearch.norms._amp import amp_function

Box = tuple[int, int, int, int]  # top, bottom, left, right
Region = Box | None  # None: the whole map
Stats = list[tuple[torch.Tensor, torch.Tensor]]  # per region: (mean, biased variance), each (N, C)
StatFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _length(x: torch.Tensor) -> int:
    return x.shape[2] * x.shape[3]


def _mask(x: torch.Tensor, box: Box) -> tuple[torch.Tensor, int]:
    """The (1, 1, H, W) 0/1 mask of `box` and its area."""
    top, bottom, left, right = box
    mask = torch.zeros(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    mask[..., top:bottom, left:right] = 1.0
    return mask, (bottom - top) * (right - left)


def _centred(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased variance (N, C) of the whole map, and the fresh centred tensor ``x - mu``."""
    n, c = x.shape[:2]
    length = _length(x)
    mu = x.view(n, c, length).sum(-1) / length
    d = x - mu[..., None, None]
    var = torch.linalg.vector_norm(d.view(n, c, length), dim=-1).square() / length
    return mu, var, d


_CHUNK = 1 << 18  # elements per chunk of centred rows (1 MiB in float32): a temporary that stays in cache


def _chunks(x: torch.Tensor) -> range:
    """Row offsets of cache-sized chunks of the (N·C, H·W) view."""
    step = max(1, _CHUNK // _length(x))
    return range(0, x.shape[0] * x.shape[1], step)


def _moments(x: torch.Tensor, box: Box | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (N, C) of the whole map or of a box, two-pass, without a full-size
    temporary (centred rows are formed chunk by chunk)."""
    n, c = x.shape[:2]
    rows = x.reshape(n * c, _length(x))
    if box is None:
        length, flat = rows.shape[1], None
        mu = rows.sum(-1) / length
    else:
        mask, length = _mask(x, box)
        flat = mask.reshape(-1)
        mu = torch.mv(rows, flat) / length
    step = max(1, _CHUNK // rows.shape[1])
    parts = []
    for i in _chunks(x):
        centred = rows[i : i + step] - mu[i : i + step, None]
        parts.append(torch.linalg.vector_norm(centred if flat is None else centred.mul_(flat), dim=-1))
    return mu.view(n, c), torch.cat(parts).square().view(n, c) / length


def _add_region_term(
    gx: torch.Tensor, x: torch.Tensor, box: Box, mu: torch.Tensor, slope: torch.Tensor, offset: torch.Tensor
) -> None:
    """gx += mask·((x - mu)·slope + offset), chunk by chunk (no full-size temporary, centred)."""
    n, c = x.shape[:2]
    mask, _ = _mask(x, box)
    flat = mask.reshape(-1)
    rows, grows = x.reshape(n * c, -1), gx.view(n * c, -1)
    mu, slope, offset = mu.reshape(-1, 1), slope.reshape(-1, 1), offset.reshape(-1, 1)
    step = max(1, _CHUNK // rows.shape[1])
    for i in _chunks(x):
        j = i + step
        term = (rows[i:j] - mu[i:j]).mul_(slope[i:j]).add_(offset[i:j]).mul_(flat)
        grows[i:j].add_(term)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as (1, N·C, H, W): one "channel" per instance and channel, for the native BN kernels."""
    n, c, h, w = t.shape
    return t.reshape(1, n * c, h, w)


def _sums(g: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum g`` and ``sum g·(x - mu)`` (mu None: x is centred) over H·W, (N, C) each, in one fused pass
    without temporaries."""
    n, c = x.shape[:2]
    ones = torch.ones(n * c, dtype=x.dtype, device=x.device)
    mean = torch.zeros_like(ones) if mu is None else mu.reshape(-1)
    _, gd, a = torch.ops.aten.native_batch_norm_backward(
        _rows(g), _rows(x), None, None, None, mean, ones, True, 0.0, [False, True, True]
    )
    return a.view(n, c), gd.view(n, c)


def _box_sums(
    g: torch.Tensor, x: torch.Tensor, box: Box, mu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum g`` and ``sum g·(x - mu)`` over `box`, (N, C) each: a matrix-vector product with the mask, and
    centred products formed chunk by chunk."""
    n, c = x.shape[:2]
    mask, _ = _mask(x, box)
    flat = mask.reshape(-1)
    rows, grows, mu = x.reshape(n * c, -1), g.reshape(n * c, -1), mu.reshape(-1, 1)
    step = max(1, _CHUNK // rows.shape[1])
    gd = torch.cat(
        [
            torch.mv((rows[i : i + step] - mu[i : i + step]).mul_(grows[i : i + step]), flat)
            for i in _chunks(x)
        ]
    )
    return torch.mv(grows, flat).view(n, c), gd.view(n, c)


def _linear(x: torch.Tensor, mu: torch.Tensor, slope: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Fresh ``(x - mu)·slope + offset`` per (n, c): the native BatchNorm inference kernel (mean mu,
    variance 1, eps 0, so its scale is exactly `slope`) on the (1, N·C, H, W) view."""
    ones = torch.ones(slope.numel(), dtype=x.dtype, device=x.device)
    rows = F.batch_norm(
        _rows(x), mu.reshape(-1), ones, slope.reshape(-1), offset.reshape(-1), False, 0.0, 0.0
    )
    return rows.view_as(x)


def _statistics(x: torch.Tensor, regions: Sequence[Region]) -> tuple[Stats, torch.Tensor | None]:
    """The statistics of every region, and for a whole-map first region its centred tensor (it becomes
    the output); boxes and further regions are reduced chunk by chunk, without full-size temporaries."""
    stats: Stats = []
    first = None
    for index, region in enumerate(regions):
        if index == 0 and region is None:
            mu, var, first = _centred(x)
        else:
            mu, var = _moments(x, region)
        stats.append((mu, var))
    return stats, first


def _col(t: torch.Tensor) -> torch.Tensor:
    return t[..., None, None]


def _output(
    x: torch.Tensor,
    d: torch.Tensor | None,
    region: Region,
    mu: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    """y = (x - mu)·S + T on `region`, x elsewhere. For the whole map the centred d becomes y in place; for
    a box, y = x + mask·((x - mu)·(S - 1) + T - mu): one fresh tensor, as for the whole map."""
    if region is None:
        assert d is not None
        return d.mul_(_col(scale)).add_(_col(shift))
    mask, _ = _mask(x, region)
    return _linear(x, mu, scale - 1.0, shift - mu).mul_(mask).add_(x)


@amp_function
class _StatAffine(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, fn: StatFn, regions: tuple[Region, ...], *params: torch.Tensor
    ) -> torch.Tensor:
        # The statistics are computed without autograd; only the small function of them is recorded.
        stats, first = _statistics(x, regions)
        for mu, var in stats:
            mu.requires_grad_(), var.requires_grad_()
        leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
        with torch.enable_grad():
            scale, shift = fn(stats, *leaves)
        y = _output(x, first, regions[0], stats[0][0].detach(), scale.detach(), shift.detach())
        ctx.save_for_backward(x)
        ctx.graph = (scale, shift, stats, leaves)
        ctx.regions = regions
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        scale, shift, stats, leaves = ctx.graph
        regions = ctx.regions
        gy = gy.contiguous()
        if regions[0] is None:
            a, gd = _sums(gy, x, stats[0][0].detach())
        else:
            a, gd = _box_sums(gy, x, regions[0], stats[0][0].detach())
        # y0 = (x0 - mu0)·S + T: dL/dS = sum g·(x0 - mu0), dL/dT = sum g.
        wanted = [t for pair in stats for t in pair] + [p for p in leaves if p.requires_grad]
        outputs = [(o, go) for o, go in ((scale, gd), (shift, a)) if o.requires_grad]
        grads = (
            # retain_graph: an outer backward with retain_graph=True (gradcheck does) may come again.
            torch.autograd.grad(
                [o for o, _ in outputs],
                wanted,
                [go for _, go in outputs],
                retain_graph=True,
                allow_unused=True,
            )
            if outputs
            else [None] * len(wanted)
        )
        stat_grads, param_grads = grads[: 2 * len(stats)], iter(grads[2 * len(stats) :])
        gparams = [next(param_grads) if p.requires_grad else None for p in leaves]
        if not ctx.needs_input_grad[0]:
            return (None, None, None, *gparams)
        s = scale.detach()
        gx = gy
        for index, (region, (mu, _)) in enumerate(zip(regions, stats, strict=True)):
            gmu, gvar = stat_grads[2 * index], stat_grads[2 * index + 1]
            gmu = torch.zeros_like(mu) if gmu is None else gmu
            gvar = torch.zeros_like(mu) if gvar is None else gvar
            if index == 0:
                gmu = gmu - s * a  # the explicit centring in y0 = (x0 - mu0)·S + T
            mask, length = (None, _length(x)) if region is None else _mask(x, region)
            # mu = mean(x), var = mean((x - mu)^2) over the region: dmu/dx = 1/L, dvar/dx = 2 (x - mu) / L.
            slope, offset, mu = 2.0 * gvar / length, gmu / length, mu.detach()
            if index == 0 and mask is None:
                gx = _linear(x, mu, slope, offset).addcmul_(gy, _col(s))
            elif index == 0:
                # gy + mask·(gy·(S - 1) + (x - mu)·slope + offset): gy·S + (x - mu)·slope + offset in the box.
                gx = _linear(x, mu, slope, offset).addcmul_(gy, _col(s - 1.0)).mul_(mask).add_(gy)
            elif mask is None:
                gx.addcmul_(x, _col(slope)).add_(_col(offset - mu * slope))
            else:
                _add_region_term(gx, x, region, mu, slope, offset)
        return (gx, None, None, *gparams)


def stat_affine(
    x: torch.Tensor,
    fn: StatFn,
    params: Sequence[torch.Tensor] = (),
    regions: Sequence[Region] = (None,),
) -> torch.Tensor:
    """``y = (x - mu_0) · S + T`` on ``regions[0]`` (the identity elsewhere), with ``(S, T) = fn(stats,
    *params)``.

    `stats` holds, for every region in `regions` (a box ``(top, bottom, left, right)`` or None for the
    whole map), the per-instance, per-channel mean and biased variance, each (N, C); `fn` returns S and
    T, each (N, C), and may use any of them and the tensors in `params` (gradients flow to all of them).
    `fn` runs once per call, so side effects such as running-statistics updates happen once.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    regions = tuple(regions)
    x = x.contiguous()  # e.g. channels_last: the kernels below view (N, C, H, W) as N·C rows
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    if needs_grad:
        return _StatAffine.apply(x, fn, regions, *params)
    stats, first = _statistics(x, regions)
    scale, shift = fn(stats, *params)
    return _output(x, first, regions[0], stats[0][0], scale, shift)
