"""CIFAR-10-C style corruptions (Hendrycks & Dietterich, ICLR 2019) on image tensors, severities 1-5.

Each takes float images (N, 3, H, W) in [0, 1] and a `torch.Generator`, and returns corrupted images in
[0, 1]; `corrupt` accepts uint8 too and returns the input's dtype. Severity parameters follow the
CIFAR-10-C code where it applies to 32×32 images (pixelate and saturate are re-scaled so that severity
orders distance, see there); fog's plasma fractal is replaced by multi-octave smooth
noise (same role, no recursion), brightness and saturation act in HSV through equivalent RGB scalings.
`corrupt_domain` makes a derived domain such as ``{base: plain, corruption: fog, severity: 3}``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from normsearch.data.domains import Domain
from normsearch.errors import NormsearchError

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _gaussian_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return x + torch.randn(x.shape, generator=g) * c


def _shot_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [500, 250, 100, 75, 50][s - 1]
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    u = torch.rand(x.shape, generator=g)
    x = x.clone()
    x[u < amount / 2] = 0.0
    x[(u >= amount / 2) & (u < amount)] = 1.0
    return x


def _disk(radius: float, blur: float) -> torch.Tensor:
    size = max(3, 2 * int(radius + 1) + 1)
    r = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    kernel = ((xx**2 + yy**2) <= radius**2).float()
    if blur > 0:  # a small Gaussian smooths the disk edge (the CIFAR-10-C "alias blur")
        gauss = torch.exp(-(xx**2 + yy**2) / (2 * blur**2 + 1e-6))
        kernel = F.conv2d(kernel[None, None], gauss[None, None], padding=size // 2)[0, 0]
    return kernel / kernel.sum()


def _defocus_blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    radius, blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)][s - 1]
    kernel = _disk(radius, blur)
    k = kernel.shape[-1]
    weight = kernel.expand(x.shape[1], 1, k, k).contiguous()
    return F.conv2d(F.pad(x, [k // 2] * 4, mode="replicate"), weight, groups=x.shape[1])


def _contrast(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    value = x.max(dim=1, keepdim=True).values
    new_value = (value + c).clamp(max=1.0)
    # Scaling RGB by V'/V changes HSV value and keeps hue and saturation; black pixels become grey.
    return torch.where(value > 0, x * new_value / value.clamp(min=1e-6), new_value.expand_as(x))


def _smooth_noise(shape: tuple[int, ...], cells: int, g: torch.Generator) -> torch.Tensor:
    grid = torch.rand((shape[0], 1, cells + 1, cells + 1), generator=g)
    return F.interpolate(grid, size=shape[2:], mode="bilinear", align_corners=True)


def _fog(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    amount, decay = [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)][s - 1]
    fog = sum(_smooth_noise(x.shape, cells, g) / decay**octave for octave, cells in enumerate((2, 4, 8, 16)))
    fog = fog / fog.amax(dim=(2, 3), keepdim=True)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + amount * fog) * peak / (peak + amount)


def _pixelate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # CIFAR-10-C's 0.95..0.65 barely change a 32×32 image and alias non-monotonically (a 2× block grid
    # is closer to the original than 0.6×): coarser steps that avoid exact divisors, 20/12/10/8/6 px at 32.
    c = [0.625, 0.375, 0.3125, 0.25, 0.1875][s - 1]
    h, w = x.shape[2:]
    small = F.interpolate(x, size=(max(1, round(h * c)), max(1, round(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def _jpeg(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    quality = [80, 65, 58, 50, 40][s - 1]
    out = torch.empty_like(x)
    for i, image in enumerate((x * 255).round().to(torch.uint8)):
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        out[i] = torch.from_numpy(np.asarray(decoded, dtype=np.float32)).permute(2, 0, 1) / 255
    return out


def _saturate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    # CIFAR-10-C alternates desaturation (0.3, 0.1) and oversaturation (2, 5, 20), so its severities are
    # not ordered by how far an image moves (oversaturating an already saturated glyph changes little);
    # here saturation shrinks monotonically towards grey.
    scale, shift = [(0.7, 0.0), (0.45, 0.0), (0.25, 0.0), (0.1, 0.0), (0.0, 0.0)][s - 1]
    value = x.max(dim=1, keepdim=True).values
    low = x.min(dim=1, keepdim=True).values
    sat = torch.where(value > 0, (value - low) / value.clamp(min=1e-6), torch.zeros_like(value))
    new_sat = (sat * scale + shift).clamp(0, 1)
    # In HSV, every channel is V - S·V·(1 - t) for a hue-dependent t; moving S keeps V and hue.
    t = torch.where(value - low > 0, (x - low) / (value - low).clamp(min=1e-6), torch.ones_like(x))
    return value - new_sat * value * (1 - t)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "fog": _fog,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "saturate": _saturate,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption `name` at `severity` (1-5) to (N, 3, H, W) images, uint8 or float in [0, 1]."""
    if name not in CORRUPTIONS:
        raise NormsearchError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise NormsearchError(f"corruption {name}: severity must be 1-5, got {severity}")
    is_uint8 = images.dtype == torch.uint8
    x = images.float() / 255 if is_uint8 else images.float()
    out = CORRUPTIONS[name](x, severity, torch.Generator().manual_seed(seed)).clamp(0, 1)
    return (out * 255).round().to(torch.uint8) if is_uint8 else out.to(images.dtype)


def corrupt_domain(base: Domain, name: str, severity: int, seed: int = 0) -> Domain:
    """A derived domain: `base`'s images corrupted, same labels and splits, named ``base+name@severity``."""
    images = corrupt(base.images, name, severity, seed)
    return Domain(f"{base.name}+{name}@{severity}", images, base.labels, dict(base.splits))
