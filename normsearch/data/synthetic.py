"""`synthetic`: the built-in, download-free domain-generalization benchmark ("shapes-dg").

Ten procedural glyph classes drawn at random position, scale and rotation; style domains that change only
appearance. The generator follows the measured prototype in shared/benchmark-design.md §5: shapes are
rasterized at 4× with Pillow and box-downsampled into an anti-aliased coverage mask m, then rendered as
``x = m·fg + (1 - m)·bg`` with per-style colour and texture rules. All test domains share one geometry
stream (same labels, shapes and source colours), so they differ in style only.

``style_bias`` (source only): with that probability an image's glyph colour is drawn near a hue its class
prefers, so colour predicts the class on the source but not on targets (style_bias 0). A network that
reads colour gains source accuracy and loses target accuracy.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from normsearch.data.domains import Domain, DomainSet
from normsearch.errors import NormsearchError

CLASSES = ["disk", "ring", "triangle", "square", "star", "plus", "crescent", "L", "T", "arrow"]
STYLES = ("plain", "texture", "pastel", "inverted", "sketch", "noisy", "fog", "photo")
_SCALE = 4  # rasterize at 4× then box-downsample: anti-aliased masks

# Unit-coordinate definitions (benchmark-design §5): ("poly", points, fill) or ("circle", cx, cy, r, fill).
_STAR = [
    (
        math.cos(math.radians(90 + 36 * k)) * (1.0 if k % 2 == 0 else 0.42),
        math.sin(math.radians(90 + 36 * k)) * (1.0 if k % 2 == 0 else 0.42),
    )
    for k in range(10)
]
SHAPES: list[list[tuple]] = [
    [("circle", 0.0, 0.0, 0.9, 255)],
    [("circle", 0.0, 0.0, 0.95, 255), ("circle", 0.0, 0.0, 0.55, 0)],
    [("poly", [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (90, 210, 330)], 255)],
    [("poly", [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)], 255)],
    [("poly", _STAR, 255)],
    [
        ("poly", [(-0.3, -1), (0.3, -1), (0.3, 1), (-0.3, 1)], 255),
        ("poly", [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)], 255),
    ],
    [("circle", 0.0, 0.0, 0.95, 255), ("circle", 0.45, 0.0, 0.8, 0)],
    [("poly", [(-0.7, -1), (-0.2, -1), (-0.2, 0.5), (0.7, 0.5), (0.7, 1), (-0.7, 1)], 255)],
    [
        (
            "poly",
            [
                (-0.9, -1),
                (0.9, -1),
                (0.9, -0.5),
                (0.25, -0.5),
                (0.25, 1),
                (-0.25, 1),
                (-0.25, -0.5),
                (-0.9, -0.5),
            ],
            255,
        )
    ],
    [("poly", [(-1, -0.22), (0.1, -0.22), (0.1, -0.6), (1, 0), (0.1, 0.6), (0.1, 0.22), (-1, 0.22)], 255)],
]


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized HSV -> RGB for arrays of shape (N,); returns (N, 3)."""
    return np.array(
        [colorsys.hsv_to_rgb(float(a) % 1.0, float(b), float(c)) for a, b, c in zip(h, s, v, strict=True)],
        dtype=np.float32,
    ).reshape(-1, 3)


def _masks(
    labels: np.ndarray,
    rng: np.random.Generator,
    size: int,
    outline: bool = False,
    glyph_scale: tuple[float, float] = (0.28, 0.42),
) -> np.ndarray:
    """Coverage masks (N, S, S) in [0, 1]; geometry draws per image: rotation, scale, centre offsets."""
    n = len(labels)
    theta = rng.uniform(0, 2 * math.pi, n)
    scale = rng.uniform(*glyph_scale, n) * size
    uv = rng.uniform(-1, 1, (n, 2))
    big = size * _SCALE
    masks = np.empty((n, size, size), dtype=np.float32)
    outlines = np.empty((n, size, size), dtype=np.float32) if outline else None
    for i in range(n):
        s = scale[i]
        margin = size / 2 - s - 0.5
        cx, cy = size / 2 + uv[i, 0] * margin, size / 2 + uv[i, 1] * margin
        c, si = math.cos(theta[i]), math.sin(theta[i])

        def to_px(
            x: float, y: float, cx: float = cx, cy: float = cy, s: float = s, c: float = c, si: float = si
        ):
            return ((cx + s * (x * c - y * si)) * _SCALE, (cy + s * (x * si + y * c)) * _SCALE)

        image = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(image)
        for part in SHAPES[labels[i]]:
            if part[0] == "poly":
                draw.polygon([to_px(x, y) for x, y in part[1]], fill=part[2])
            else:
                px, py = to_px(part[1], part[2])
                r = part[3] * s * _SCALE
                draw.ellipse([px - r, py - r, px + r, py + r], fill=part[4])
        masks[i] = np.asarray(image.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
        if outlines is not None:
            filled = np.asarray(image.resize((2 * size, 2 * size), Image.BOX), dtype=np.float32) / 255.0
            eroded = filled
            for _ in range(3):
                padded = np.pad(eroded, 1)
                eroded = np.min(
                    [padded[a : a + 2 * size, b : b + 2 * size] for a in range(3) for b in range(3)], axis=0
                )
            edge = filled - eroded
            outlines[i] = edge.reshape(size, 2, size, 2).mean(axis=(1, 3))
    return outlines if outline else masks


def _smooth_noise(rng: np.random.Generator, n: int, channels: int, cells: int, size: int) -> np.ndarray:
    """U[0,1] values on a (cells+1)² grid, bilinearly upsampled to size×size: (n, channels, S, S)."""
    grid = torch.from_numpy(rng.uniform(0, 1, (n, channels, cells + 1, cells + 1)).astype(np.float32))
    up = torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)
    return up.numpy()


def _textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Two-colour texture weights t in [0, 1] (n, S, S): stripes, checker, dots or blobs per image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(0, 4, n)
    phi = rng.uniform(0, math.pi, n)
    period = rng.uniform(3, 7, n)
    phase = rng.uniform(0, 2 * math.pi, n)
    blobs = _smooth_noise(rng, n, 1, 6, size)[:, 0] > 0.5
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        p, ph = period[i], phase[i]
        if kind[i] == 0:
            out[i] = 0.5 + 0.5 * np.sin(
                2 * math.pi * (xs * math.cos(phi[i]) + ys * math.sin(phi[i])) / p + ph
            )
        elif kind[i] == 1:
            out[i] = (np.floor(1.2 * xs / p + ph) + np.floor(1.2 * ys / p)) % 2
        elif kind[i] == 2:
            out[i] = (np.sin(2 * math.pi * xs / p + ph) * np.sin(2 * math.pi * ys / p)) > 0.3
        else:
            out[i] = blobs[i]
    return out


def _photos(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Natural-looking procedural backgrounds (MNIST-M stand-in, no download): multi-octave coloured noise."""
    img = np.zeros((n, 3, size, size), dtype=np.float32)
    for cells, weight in ((2, 0.5), (5, 0.3), (11, 0.2)):
        img += weight * _smooth_noise(rng, n, 3, cells, size)
    lo, hi = img.min(axis=(1, 2, 3), keepdims=True), img.max(axis=(1, 2, 3), keepdims=True)
    return (img - lo) / np.maximum(hi - lo, 1e-6)


def _render(
    style: str,
    labels: np.ndarray,
    rng_geom: np.random.Generator,
    rng_style: np.random.Generator,
    size: int,
    style_bias: float,
    colour_rng: np.random.Generator,
    glyph_scale: tuple[float, float] = (0.28, 0.42),
) -> np.ndarray:
    """Images (N, 3, S, S) float32 in [0, 1] of one style."""
    n = len(labels)
    m = _masks(labels, rng_geom, size, outline=(style == "sketch"), glyph_scale=glyph_scale)[:, None]
    # Source colours are drawn first in every style (pairing): fg bright and saturated, bg dark.
    hue = colour_rng.uniform(0, 1, n)
    biased = colour_rng.uniform(0, 1, n) < style_bias
    hue = np.where(biased, labels / len(CLASSES) + colour_rng.uniform(-0.03, 0.03, n), hue)
    fg = _hsv(hue, colour_rng.uniform(0.5, 1, n), colour_rng.uniform(0.75, 1, n))[:, :, None, None]
    bg = _hsv(colour_rng.uniform(0, 1, n), colour_rng.uniform(0, 0.5, n), colour_rng.uniform(0, 0.3, n))[
        :, :, None, None
    ]
    plain = m * fg + (1 - m) * bg
    if style in ("plain", "sketch"):
        x = plain
    elif style == "texture":
        fg2 = _hsv(rng_style.uniform(0, 1, n), rng_style.uniform(0.3, 1, n), rng_style.uniform(0.4, 0.7, n))[
            :, :, None, None
        ]
        bg2 = _hsv(rng_style.uniform(0, 1, n), rng_style.uniform(0, 0.8, n), rng_style.uniform(0.2, 0.5, n))[
            :, :, None, None
        ]
        t1, t2 = _textures(rng_style, n, size)[:, None], _textures(rng_style, n, size)[:, None]
        x = m * (fg * t1 + (1 - t1) * fg2) + (1 - m) * (bg * t2 + (1 - t2) * bg2)
    elif style == "pastel":
        base, d, h = (
            rng_style.uniform(0.45, 0.75, n),
            rng_style.uniform(0.12, 0.25, n),
            rng_style.uniform(0, 1, n),
        )
        bgp = _hsv(h, rng_style.uniform(0, 0.3, n), base)[:, :, None, None]
        fgp = _hsv(h + rng_style.uniform(-0.15, 0.15, n), rng_style.uniform(0, 0.3, n), base + d)[
            :, :, None, None
        ]
        x = m * fgp + (1 - m) * bgp
    elif style == "inverted":
        x = 1 - plain
    elif style == "noisy":
        x = plain + rng_style.normal(0, 0.2, plain.shape).astype(np.float32)
    elif style == "fog":
        h = _smooth_noise(rng_style, n, 1, 3, size)
        x = 0.5 * plain + 0.5 * (0.5 + 0.5 * h)
    elif style == "photo":
        x = np.abs(_photos(rng_style, n, size) - m)
    else:
        raise NormsearchError(f"synthetic: unknown style {style!r}; allowed: {', '.join(STYLES)}")
    return np.clip(x, 0, 1)


def _to_uint8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(x * 255).astype(np.uint8))


def make_synthetic(
    domains: list[str] | tuple[str, ...] = STYLES,
    source: str | Sequence[str] = "plain",
    n_train: int = 4000,
    n_val: int = 500,
    n_test: int = 500,
    size: int = 32,
    style_bias: float = 0.8,
    seed: int = 0,
    glyph_scale: tuple[float, float] = (0.28, 0.42),
) -> DomainSet:
    """Generate the benchmark. Each source domain gets train/val/test splits with `style_bias`; every other
    domain gets val/test splits with style_bias 0 over the same (paired) geometry as the sources'. With
    several sources, the first keeps the single-source streams and each further one draws its training
    images from streams of its own (sources are different photos, not restyled copies)."""
    if not 0.0 < glyph_scale[0] <= glyph_scale[1] < 0.5:
        raise NormsearchError(f"synthetic: glyph_scale must satisfy 0 < low <= high < 0.5, got {glyph_scale}")
    if not 0.0 <= style_bias <= 1.0:
        raise NormsearchError(f"synthetic: style_bias must be in [0, 1], got {style_bias}")
    sources = [source] if isinstance(source, str) else list(source)
    unknown = [d for d in (*domains, *sources) if d not in STYLES]
    if unknown:
        raise NormsearchError(f"synthetic: unknown domain {unknown[0]!r}; allowed: {', '.join(STYLES)}")
    names = [*sources, *[d for d in domains if d not in sources]]
    n_eval = n_val + n_test

    def rng(*stream: int) -> np.random.Generator:
        # One independent stream per (seed, purpose): adding a domain never changes another's images.
        return np.random.default_rng(np.random.SeedSequence([seed, *stream]))

    eval_labels = rng(2000).integers(0, len(CLASSES), n_eval)
    out: dict[str, Domain] = {}
    for name in names:
        bias = style_bias if name in sources else 0.0
        style_id = 3000 + STYLES.index(name)
        # Every domain's eval images reuse the same geometry (2001) and colour (2002) streams: paired.
        images = _render(name, eval_labels, rng(2001), rng(style_id, 0), size, bias, rng(2002), glyph_scale)
        labels = eval_labels
        splits = {"val": torch.arange(n_val), "test": torch.arange(n_val, n_eval)}
        if name in sources:
            k = sources.index(name)
            extra = () if k == 0 else (k,)  # the first source keeps the single-source streams
            train_labels = rng(1000, *extra).integers(0, len(CLASSES), n_train)
            train = _render(
                name,
                train_labels,
                rng(1001, *extra),
                rng(style_id, 1),
                size,
                bias,
                rng(1002, *extra),
                glyph_scale,
            )
            images = np.concatenate([train, images])
            labels = np.concatenate([train_labels, eval_labels])
            splits = {
                "train": torch.arange(n_train),
                "val": torch.arange(n_train, n_train + n_val),
                "test": torch.arange(n_train + n_val, n_train + n_eval),
            }
        out[name] = Domain(name, _to_uint8(images), torch.from_numpy(labels.astype(np.int64)), splits)
    return DomainSet(list(CLASSES), out)
