"""The batched augmentation against torchvision v2's per-image ops (fixed parameters, 1e-5) and against the
per-image path's parameter distributions (10k draws, two-sample KS and chi-square bounds)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from normsearch.data import augment_batched as ab
from normsearch.data.pipeline import AugmentConfig, make_augment


def _images(n: int = 6, h: int = 40, w: int = 36, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def test_resized_crop_and_flip_equal_v2_per_image():
    x = _images()
    g = torch.Generator().manual_seed(1)
    top, left, h, w = ab.sample_crops(len(x), 40, 36, g)
    # Include shrinking and enlarging crops and the whole image.
    top[0], left[0], h[0], w[0] = 0, 0, 40, 36
    top[1], left[1], h[1], w[1] = 5, 3, 12, 9
    flip = torch.tensor([False, True, False, True, True, False])
    params = ab.Params(top, left, h, w, flip)
    for size in (24, 32, 64):
        out = ab.resized_crop(x, params, size)
        for k in range(len(x)):
            ref = F.resized_crop(
                x[k], int(top[k]), int(left[k]), int(h[k]), int(w[k]), [size, size], antialias=True
            )
            if flip[k]:
                ref = F.horizontal_flip(ref)
            torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "op,ref",
    [
        (ab.brightness, F.adjust_brightness),
        (ab.contrast, F.adjust_contrast),
        (ab.saturation, F.adjust_saturation),
        (ab.hue, F.adjust_hue),
    ],
)
def test_color_ops_equal_v2_per_image(op, ref):
    x = _images()
    x[0] = 0.5  # a grey image: hue's max == min branch
    factors = torch.tensor([0.7, 1.3, 1.0, 0.85, 1.12, 0.71])
    if op is ab.hue:
        factors = factors - 1
    out = op(x, factors)
    for k in range(len(x)):
        torch.testing.assert_close(out[k], ref(x[k], float(factors[k])), atol=1e-5, rtol=0)


def test_jitter_order_and_grayscale_equal_v2_per_image():
    x = _images(n=24)
    g = torch.Generator().manual_seed(3)
    factors, order = ab.sample_jitter(len(x), g)
    gray = torch.rand(len(x), generator=g) < 0.5
    out = ab.random_grayscale(ab.color_jitter(x, factors, order), gray)
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for k in range(len(x)):
        ref = x[k]
        for o in order[k].tolist():  # ColorJitter.transform applies fn_idx in order
            ref = fns[o](ref, float(factors[k, o]))
        if gray[k]:
            ref = F.rgb_to_grayscale(ref, num_output_channels=3)
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def test_translate_equals_v2_random_crop_with_edge_padding():
    x = (_images(h=16, w=16) * 255).to(torch.uint8)
    aug = ab.BatchedAugment("none", 16, pad=3, hflip=True)
    params = aug.sample(len(x), 16, 16, torch.Generator().manual_seed(0))
    out = aug(x, params)
    for k in range(len(x)):
        padded = F.pad(x[k], [3, 3, 3, 3], padding_mode="edge")
        ref = F.crop(padded, int(params.top[k]), int(params.left[k]), 16, 16)
        if params.flip[k]:
            ref = F.horizontal_flip(ref)
        assert torch.equal(out[k], ref)


def test_deterministic_given_the_seed():
    x = (_images(h=32, w=32) * 255).to(torch.uint8)
    aug = make_augment(AugmentConfig(preset="domainbed", engine="batched"), 24)
    a = aug(x, aug.sample(len(x), 32, 32, torch.Generator().manual_seed(5)))
    b = aug(x, aug.sample(len(x), 32, 32, torch.Generator().manual_seed(5)))
    c = aug(x, aug.sample(len(x), 32, 32, torch.Generator().manual_seed(6)))
    assert a.dtype == torch.uint8 and a.shape == (6, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    values = torch.cat([a, b]).double().unique()
    ca = torch.searchsorted(a.double().sort().values, values, right=True) / len(a)
    cb = torch.searchsorted(b.double().sort().values, values, right=True) / len(b)
    return float((ca - cb).abs().max())


N = 10_000
# KS critical value at alpha = 0.001 for two samples of N: 1.95 * sqrt(2 / N) (conservative for ties).
KS_BOUND = 1.95 * math.sqrt(2 / N)


@functools.cache
def _per_image_params(height: int, width: int) -> dict[str, torch.Tensor]:
    """N draws of the per-image v2 pipeline's parameters, with its own samplers and the global RNG."""
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(24, scale=(0.7, 1.0), antialias=True)
    jitter = v2.ColorJitter(0.3, 0.3, 0.3, 0.3)
    image = torch.zeros(3, height, width)
    rows: dict[str, list] = {k: [] for k in ("top", "left", "h", "w", "flip", "f", "order", "gray")}
    for _ in range(N):
        p = crop.make_params([image])
        rows["top"].append(p["top"])
        rows["left"].append(p["left"])
        rows["h"].append(p["height"])
        rows["w"].append(p["width"])
        rows["flip"].append(bool(torch.rand(1) < 0.5))
        j = jitter.make_params([image])
        rows["f"].append(
            [j["brightness_factor"], j["contrast_factor"], j["saturation_factor"], j["hue_factor"]]
        )
        rows["order"].append(j["fn_idx"].tolist())
        rows["gray"].append(bool(torch.rand(1) < 0.1))
    return {k: torch.tensor(v) for k, v in rows.items()}


@pytest.mark.parametrize("shape", [(40, 36)])
def test_parameter_distributions_match_the_per_image_path(shape):
    ref = _per_image_params(*shape)
    aug = ab.BatchedAugment("domainbed", 24)
    p = aug.sample(N, *shape, torch.Generator().manual_seed(1))
    for name, ours in (("top", p.top), ("left", p.left), ("h", p.height), ("w", p.width)):
        assert _ks(ours, ref[name]) < KS_BOUND, name
    for k in range(4):
        assert _ks(p.factors[:, k], ref["f"][:, k]) < KS_BOUND, k
    for name, ours, rate in (("flip", p.flip, 0.5), ("gray", p.gray, 0.1)):
        # two-proportion z-test, |z| < 3.3 (alpha 0.001)
        a, b = ours.double().mean(), ref[name].double().mean()
        pooled = (a + b) / 2
        assert abs(a - b) / math.sqrt(2 * pooled * (1 - pooled) / N) < 3.3, name
        assert abs(a - rate) < 0.02

    # The 24 orders: chi-square of both samples' counts (23 dof; 49.7 is the 0.001 critical value).
    def counts(order: torch.Tensor) -> torch.Tensor:
        code = (order * torch.tensor([64, 16, 4, 1])).sum(1)
        return torch.bincount(code, minlength=256).double()

    ca, cb = counts(p.order), counts(ref["order"])
    used = (ca + cb) > 0
    assert int(used.sum()) == 24
    chi2 = float((((ca - cb) ** 2) / (ca + cb))[used].sum())
    assert chi2 < 49.7


def test_a_shifted_sampler_fails_the_distribution_bound(monkeypatch):
    """The bound can fail: crops drawn at scale 0.6-1 instead of 0.7-1 are caught."""
    ref = _per_image_params(40, 36)
    monkeypatch.setattr(ab, "SCALE", (0.6, 1.0))
    p = ab.BatchedAugment("domainbed", 24).sample(N, 40, 36, torch.Generator().manual_seed(1))
    assert _ks(p.height * p.width, ref["h"] * ref["w"]) > KS_BOUND


@pytest.mark.slow
def test_training_with_batched_augmentation_is_deterministic_and_resumes_exactly():
    """train_candidate with `engine: batched`: same seed, same numbers; resumed from epoch 1, the same
    numbers as uninterrupted (the parameters come from the trial's generator, which the state keeps)."""
    from normsearch.arch import ArchConfig
    from normsearch.data.spec import DataConfig, load_data
    from normsearch.train import TrainConfig, train_candidate

    data_config = DataConfig(select=["texture"], test=["fog"], n_train=120, n_val=20, n_test=20)
    data = load_data(data_config)
    config = TrainConfig(epochs=2, batch_size=40, augment=AugmentConfig(preset="domainbed", engine="batched"))
    arch = ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}})
    states = []
    first = train_candidate(arch, data, data_config, config, seed=2, threads=1, snapshot=states.append)
    again = train_candidate(arch, data, data_config, config, seed=2, threads=1)
    resumed = train_candidate(arch, data, data_config, config, seed=2, threads=1, resume=states[0])
    assert first.final["loss"] == again.final["loss"] == resumed.final["loss"]
    per_image = config.model_copy(update={"augment": AugmentConfig(preset="domainbed", engine="per_image")})
    assert (
        train_candidate(arch, data, data_config, per_image, seed=2, threads=1).final["loss"]
        != first.final["loss"]
    )
