"""Training augmentation of a whole batch in a few tensor ops, with per-image random parameters: the same
distributions as the per-image transforms-v2 path (`pipeline.make_augment`), for a device that the
per-image Python loop (tens of small kernel launches per image) would leave waiting.

Written with torch ops rather than Kornia (`kornia.augmentation`), for three reasons: Kornia is not on the
package index this project installs from (``pip index versions kornia`` finds nothing here), so it would
be a dependency no CI could resolve; its samplers are its own (RandomResizedCrop's, ColorJitter's order),
so pinning it to DomainBed's torchvision transforms would take the same tests as pinning our own ops; and
the ops are few: one separable resize, four colour blends, one HSV round trip.

DomainBed's augmentation (`preset: domainbed`; DomainBed `datasets.py`), per image, in this order:

- RandomResizedCrop(size, scale 0.7-1, ratio 3/4-4/3, antialias): torchvision's sampler (ten tries, then
  the central crop) drawn for every image at once; the crop *and* the resize of every image are two batched
  matrix products ``Wy @ x @ Wxᵀ`` whose rows are PyTorch's antialiased-bilinear weights restricted to the
  image's crop (zero outside it): exactly `interpolate(..., antialias=True)` of each crop.
- RandomHorizontalFlip: folded into ``Wx`` by reversing a flipped image's output columns.
- ColorJitter(0.3, 0.3, 0.3, 0.3): brightness, contrast, saturation and hue factors per image, applied in a
  per-image random order (torchvision's `randperm(4)`): at each of the four positions every op runs once
  on the images that have it there (index sets computed on the host, so nothing waits on the device).
- RandomGrayscale(0.1): a mask.

The built-in benchmark's translation (random crop of the edge-padded image) and flip are one gather with
clamped indices (edge padding is index clamping).

Parameters are drawn on the host from the trial's seeded `torch.Generator` (`sample`), separately from
applying them (`__call__`), so a streamed batch (`data.stream`) carries the parameters its resident twin
would have drawn. The batch is augmented in float32 in [0, 1] and rounded to uint8 once at the end; the
per-image v2 path on uint8 truncates to uint8 after each colour op (a bias of up to half a grey level per
op that this path does not have).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
SCALE = (0.7, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = 0.3
GRAY_P = 0.1
TRIES = 10  # torchvision's RandomResizedCrop tries ten crops before the central one


@dataclass(frozen=True)
class Params:
    """Per-image parameters of one batch (host tensors; `to` moves them with the batch)."""

    top: torch.Tensor  # (B,) long: crop origin (domainbed) or offset in the padded image (translate)
    left: torch.Tensor
    height: torch.Tensor  # (B,) long: crop size (domainbed) or the image's own size (translate)
    width: torch.Tensor
    flip: torch.Tensor  # (B,) bool
    factors: torch.Tensor | None = None  # (B, 4) float: brightness, contrast, saturation, hue
    order: torch.Tensor | None = None  # (B, 4) long: op applied at each position (ColorJitter's fn_idx)
    gray: torch.Tensor | None = None  # (B,) bool

    def to(self, device: torch.device) -> Params:
        """The same parameters on `device` (non-blocking copies)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator, dtype=torch.float64) * (high - low) + low


def sample_crops(n: int, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) of `n` RandomResizedCrops of a height×width image: torchvision v2's sampler
    (target area uniform in `SCALE`, log aspect ratio uniform in log `RATIO`, the first of ten tries that
    fits, else the central crop clipped to `RATIO`), vectorised over images and tries."""
    area = height * width
    target = area * _uniform(n, *SCALE, generator, TRIES)
    aspect = torch.exp(_uniform(n, math.log(RATIO[0]), math.log(RATIO[1]), generator, TRIES))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.long().argmax(1, keepdim=True)
    found = ok.any(1)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    # The central fallback (torchvision's), for the images none of whose tries fit.
    ratio = width / height
    if ratio < RATIO[0]:
        fw, fh = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        fw, fh = round(height * RATIO[1]), height
    else:
        fw, fh = width, height
    h = torch.where(found, h, fh)
    w = torch.where(found, w, fw)
    u_top, u_left = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    top = torch.where(found, (u_top * (height - h + 1)).long().clamp_max(height - h), (height - fh) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).long().clamp_max(width - w), (width - fw) // 2)
    return top, left, h, w


def sample_jitter(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(factors (n, 4), order (n, 4)): ColorJitter(0.3, 0.3, 0.3, 0.3)'s brightness, contrast and
    saturation factors uniform in [0.7, 1.3], hue shift uniform in [-0.3, 0.3], and a uniformly random
    order of the four ops per image (torchvision's `randperm(4)`)."""
    factors = torch.rand(n, 4, generator=generator) * (2 * JITTER) + (1 - JITTER)
    factors[:, 3] = factors[:, 3] - 1  # hue: [-0.3, 0.3]
    order = torch.rand(n, 4, generator=generator).argsort(1)  # a uniform permutation per image
    return factors, order


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, full: int, out: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, out, full): row i of image b holds PyTorch's antialiased-bilinear weights (``interpolate(...,
    mode='bilinear', antialias=True, align_corners=False)``; the triangle filter widened by the scale when
    shrinking) of output pixel i over the crop ``[start, start + length)`` of a `full`-long axis, zero
    outside it. Computed in float64, normalised per row as PyTorch does."""
    length = length.double()[:, None, None]
    scale = length / out
    support = torch.where(scale >= 1, scale, torch.ones_like(scale))  # bilinear: interp_size 2 → 1·scale
    invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(out, dtype=torch.float64)[None, :, None] + 0.5)
    pos = torch.arange(full, dtype=torch.float64)[None, None, :] - start.double()[:, None, None]
    weight = (1 - ((pos - center + 0.5) * invscale).abs()).clamp_min(0)
    inside = (pos >= 0) & (pos < length) & ((pos - center + 0.5).abs() < support)
    weight = weight * inside
    return (weight / weight.sum(-1, keepdim=True)).to(dtype)


def resized_crop(
    x: torch.Tensor, params: Params, size: int, weights_y: torch.Tensor | None = None
) -> torch.Tensor:
    """Every image's crop resized to size×size (antialiased bilinear) and flipped where `params.flip`, in
    two batched matrix products; `x` float (B, C, H, W)."""
    wy = resize_weights(params.top, params.height, x.shape[-2], size).to(x.device)
    wx = resize_weights(params.left, params.width, x.shape[-1], size).to(x.device)
    wx = torch.where(params.flip.to(x.device)[:, None, None], wx.flip(1), wx)
    return torch.matmul(torch.matmul(wy[:, None], x), wx.transpose(1, 2)[:, None])


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of float RGB images (torchvision's weights)."""
    r, g, b = x.unbind(1)
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (x * ratio + other * (1 - ratio)).clamp_(0, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness with a factor per image: x·f, clamped to [0, 1]."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """adjust_contrast per image: a blend with the mean of the image's luma."""
    return _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """adjust_saturation per image: a blend with the image's luma."""
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, _ = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    eqc = maxc == minc
    span = maxc - minc
    ones = torch.ones_like(maxc)
    s = span / torch.where(eqc, ones, maxc)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / torch.where(eqc, ones, span).unsqueeze(1)).unbind(1)
    not_r = maxc != r
    is_g = maxc == g
    h = (bc - gc) * ~not_r + (rc + 2.0 - bc) * (is_g & not_r) + (gc + 4.0 - rc) * (not_r & ~is_g)
    h = (h / 6.0 + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=1)


_HSV_SELECT = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((s * f + (1.0 - s)) * v).clamp(0.0, 1.0)
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)
    select = _HSV_SELECT.to(x.device)[:, i.long().remainder(6)].moveaxis(0, 1)
    return vpqt.gather(1, select)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """adjust_hue per image: the hue (as a fraction of the circle) shifted in HSV (torchvision's
    conversion, after Pillow's)."""
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0] + shift.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


COLOR_OPS = (brightness, contrast, saturation, hue)  # ColorJitter's fn_idx 0..3


def jitter_groups(order: torch.Tensor) -> list[list[torch.Tensor]]:
    """groups[k][o]: the images whose k-th colour op is op `o` (host index tensors)."""
    return [[(order[:, k] == o).nonzero().flatten() for o in range(4)] for k in range(order.shape[1])]


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The four colour ops in each image's own order (see the module docstring); `order` on the host."""
    factors = factors.to(x.device)
    for group in jitter_groups(order.cpu()):
        for o, (op, index) in enumerate(zip(COLOR_OPS, group, strict=True)):
            if len(index) == len(x):
                x = op(x, factors[:, o])
            elif len(index):
                index = index.to(x.device, non_blocking=True)
                x = x.index_copy(0, index, op(x[index], factors[index, o]))
    return x


def random_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images under `mask` replaced by their luma in all three channels."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def translate(x: torch.Tensor, params: Params, pad: int) -> torch.Tensor:
    """RandomCrop(padding=pad, padding_mode='edge') and a flip per image, as one gather: a crop of the
    edge-padded image at (top, left) reads the image at indices clamped to its border."""
    n, _, height, width = x.shape
    rows = (params.top[:, None] - pad + torch.arange(height)).clamp(0, height - 1)
    cols = (params.left[:, None] - pad + torch.arange(width)).clamp(0, width - 1)
    cols = torch.where(params.flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class BatchedAugment:
    """A batch's augmentation: `sample` draws every image's parameters on the host, `__call__` applies
    them to a uint8 (B, C, H, W) batch wherever it lives and returns uint8 (B, C, size, size)."""

    batched = True

    def __init__(self, preset: str, size: int, pad: int = 0, hflip: bool = False) -> None:
        self.preset, self.size, self.pad, self.hflip = preset, size, pad, hflip

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> Params:
        """Every image's parameters, drawn from `generator` in a fixed order (deterministic)."""
        if self.preset == "domainbed":
            top, left, h, w = sample_crops(n, height, width, generator)
            flip = torch.rand(n, generator=generator) < 0.5
            factors, order = sample_jitter(n, generator)
            gray = torch.rand(n, generator=generator) < GRAY_P
            return Params(top, left, h, w, flip, factors, order, gray)
        top = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        return Params(top, left, torch.full((n,), height), torch.full((n,), width), flip)

    def __call__(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        if self.preset != "domainbed":
            return translate(images, params, self.pad)
        x = images.float().div_(255)
        x = resized_crop(x, params, self.size)
        x = color_jitter(x.clamp_(0, 1), params.factors, params.order)
        x = random_grayscale(x, params.gray)
        return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
