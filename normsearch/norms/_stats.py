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
  mean is one matrix-vector product with the mask, its centred copy ``(x - mu)·mask`` is saved, and the
  output is ``x + d·(S - 1) + mask·(T - mu)``: the identity outside the box.
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


def _centred(x: torch.Tensor, box: Box | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased variance (N, C) of the map or of a box, and the fresh centred tensor (N, C, H, W):
    ``x - mu`` for the map, ``(x - mu)·mask`` (zero outside) for a box."""
    n, c = x.shape[:2]
    rows = x.reshape(n * c, _length(x))
    if box is None:
        mu = rows.sum(-1).view(n, c) / rows.shape[1]
        d = x - mu[..., None, None]
        length = rows.shape[1]
    else:
        mask, length = _mask(x, box)
        mu = torch.mv(rows, mask.reshape(-1)).view(n, c) / length
        d = (x - mu[..., None, None]).mul_(mask)
    var = torch.linalg.vector_norm(d.view(n, c, -1), dim=-1).square() / length
    return mu, var, d


_CHUNK = 1 << 18  # elements per chunk of centred rows (1 MiB in float32): a temporary that stays in cache


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (N, C) of the whole map, two-pass, without a full-size temporary."""
    n, c = x.shape[:2]
    length = _length(x)
    rows = x.reshape(n * c, length)
    mu = rows.sum(-1) / length
    step = max(1, _CHUNK // length)
    var = torch.cat(
        [
            torch.linalg.vector_norm(rows[i : i + step] - mu[i : i + step, None], dim=-1)
            for i in range(0, n * c, step)
        ]
    )
    return mu.view(n, c), var.square().view(n, c) / length


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


def _linear(x: torch.Tensor, mu: torch.Tensor, slope: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Fresh ``(x - mu)·slope + offset`` per (n, c): the native BatchNorm inference kernel (mean mu,
    variance 1, eps 0, so its scale is exactly `slope`) on the (1, N·C, H, W) view."""
    ones = torch.ones(slope.numel(), dtype=x.dtype, device=x.device)
    rows = F.batch_norm(
        _rows(x), mu.reshape(-1), ones, slope.reshape(-1), offset.reshape(-1), False, 0.0, 0.0
    )
    return rows.view_as(x)


def _statistics(x: torch.Tensor, regions: Sequence[Region]) -> tuple[Stats, list[torch.Tensor | None]]:
    """The statistics of every region and the centred tensors: the first region's (it becomes the output)
    and every box's (backward reads them); None for a further whole-map region."""
    stats: Stats = []
    centred: list[torch.Tensor | None] = []
    for index, region in enumerate(regions):
        if index > 0 and region is None:
            mu, var = _moments(x)
            d = None
        else:
            mu, var, d = _centred(x, region)
        stats.append((mu, var))
        centred.append(d)
    return stats, centred


def _col(t: torch.Tensor) -> torch.Tensor:
    return t[..., None, None]


def _output(
    x: torch.Tensor,
    d: torch.Tensor,
    region: Region,
    mu: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    """y = (x - mu)·S + T on `region`, x elsewhere. For the whole map the centred d becomes y in place; for
    a box (d = (x - mu)·mask, kept for backward) y = x + d·(S - 1) + mask·(T - mu)."""
    if region is None:
        return d.mul_(_col(scale)).add_(_col(shift))
    mask, _ = _mask(x, region)
    return x.clone().addcmul_(d, _col(scale - 1.0)).addcmul_(mask, _col(shift - mu))


@amp_function
class _StatAffine(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, fn: StatFn, regions: tuple[Region, ...], *params: torch.Tensor
    ) -> torch.Tensor:
        # The statistics are computed without autograd; only the small function of them is recorded.
        stats, centred = _statistics(x, regions)
        for mu, var in stats:
            mu.requires_grad_(), var.requires_grad_()
        leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
        with torch.enable_grad():
            scale, shift = fn(stats, *leaves)
        first = centred[0]
        assert first is not None
        y = _output(x, first, regions[0], stats[0][0].detach(), scale.detach(), shift.detach())
        if regions[0] is None:
            centred[0] = None  # it is y now; backward reads x
        ctx.save_for_backward(x)
        ctx.graph = (scale, shift, stats, leaves)
        ctx.centred = centred
        ctx.regions = regions
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        scale, shift, stats, leaves = ctx.graph
        regions, centred = ctx.regions, ctx.centred
        gy = gy.contiguous()
        n, c = x.shape[:2]
        if regions[0] is None:
            a, gd = _sums(gy, x, stats[0][0].detach())
        else:
            mask0, _ = _mask(x, regions[0])
            _, gd = _sums(gy, centred[0], None)  # d is zero outside the box
            a = torch.mv(gy.view(n * c, -1), mask0.reshape(-1)).view(n, c)
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
        for index, (region, (mu, _), d) in enumerate(zip(regions, stats, centred, strict=True)):
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
                # gy + gy·mask·(S - 1) + d·slope + mask·offset: gy·S + (x - mu)·slope + offset in the box.
                gx = (gy * mask).mul_(_col(s - 1.0)).add_(gy)
                gx.addcmul_(d, _col(slope)).addcmul_(mask, _col(offset))
            elif mask is None:
                gx.addcmul_(x, _col(slope)).add_(_col(offset - mu * slope))
            else:
                gx.addcmul_(d, _col(slope)).addcmul_(mask, _col(offset))
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
    stats, centred = _statistics(x, regions)
    scale, shift = fn(stats, *params)
    first = centred[0]
    assert first is not None
    return _output(x, first, regions[0], stats[0][0], scale, shift)
