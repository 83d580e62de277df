from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from normsearch.norms import CrossNorm, CrossNormPolicy, make_norm


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise mean and std as in the released calc_mean_std: sqrt(unbiased var + 1e-5)."""
    flat = x.flatten(2)
    return flat.mean(-1), torch.sqrt(flat.var(-1, unbiased=True) + 1e-5)


def _active(spec: str, channels: int, seed: int = 0) -> CrossNorm:
    layer = make_norm(f"{spec},seed={seed}" if ":" in spec else f"{spec}:seed={seed}", channels)
    layer.train()
    layer.active = True
    return layer


def _x(shape: tuple[int, ...] = (6, 4, 7, 7), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Distinct styles per instance and channel, so partners can be identified by their statistics.
    n, c = shape[:2]
    scale = torch.rand(n, c, 1, 1, generator=gen, dtype=torch.float64) * 3 + 0.5
    shift = torch.randn(n, c, 1, 1, generator=gen, dtype=torch.float64) * 4
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift


def test_two_instance_mode_swaps_statistics_with_another_instance() -> None:
    x = _x()
    y = _active("crossnorm", 4)(x)
    mu_x, std_x = _stats(x)
    mu_y, _ = _stats(y)
    # Eq. 2: y = sigma_B (x - mu_A)/sigma_A + mu_B, so y's mean is mu_B and its std is sigma_B·s_A/sigma_A.
    partners = []
    for n in range(x.shape[0]):
        matches = [m for m in range(x.shape[0]) if torch.allclose(mu_y[n], mu_x[m])]
        assert len(matches) == 1
        partners.append(matches[0])
    assert sorted(partners) == list(range(x.shape[0]))  # a permutation of the batch
    assert all(p != n for n, p in enumerate(partners))  # nobody paired with itself
    for n, m in enumerate(partners):
        expected = (x[n] - mu_x[n, :, None, None]) / std_x[n, :, None, None] * std_x[m, :, None, None] + mu_x[
            m, :, None, None
        ]
        torch.testing.assert_close(y[n], expected)


def test_one_instance_mode_swaps_statistics_between_channels() -> None:
    x = _x((3, 5, 6, 6), seed=1)
    y = _active("crossnorm:mode=1ins", 5)(x)
    mu_x, std_x = _stats(x)
    mu_y, _ = _stats(y)
    for n in range(3):
        partners = []
        for c in range(5):
            matches = [k for k in range(5) if torch.allclose(mu_y[n, c], mu_x[n, k])]
            assert len(matches) == 1
            partners.append(matches[0])
            k = matches[0]
            expected = (x[n, c] - mu_x[n, c]) / std_x[n, c] * std_x[n, k] + mu_x[n, k]
            torch.testing.assert_close(y[n, c], expected)
        assert sorted(partners) == list(range(5)) and all(p != c for c, p in enumerate(partners))


def test_identity_in_eval_and_when_inactive() -> None:
    x = _x()
    layer = _active("crossnorm", 4)
    layer.eval()
    assert layer(x) is x
    layer.train()
    layer.active = False
    assert layer(x) is x


@pytest.mark.parametrize("crop", ["style", "content", "both"])
@pytest.mark.parametrize("side", [1, 2, 3, 8])
def test_crops_terminate_on_tiny_maps(crop: str, side: int) -> None:
    layer = _active(f"crossnorm:crop={crop}", 4)
    x = _x((4, 4, side, side))
    for _ in range(20):
        y = layer(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


def test_content_crop_changes_only_a_box_covering_the_threshold() -> None:
    layer = _active("crossnorm:crop=content,threshold=0.3", 4, seed=3)
    x = _x((4, 4, 10, 10))
    for _ in range(10):
        changed = (layer(x) != x).any(dim=(0, 1))
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert changed.sum() == h * w  # one rectangle
        assert h * w >= 0.3 * 100


def test_same_seed_same_output_and_no_global_rng_use() -> None:
    x = _x()
    a, b = _active("crossnorm:crop=both", 4, seed=7), _active("crossnorm:crop=both", 4, seed=7)
    state = torch.get_rng_state()
    outputs_a = [a(x) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state)
    outputs_b = [b(x) for _ in range(3)]
    for ya, yb in zip(outputs_a, outputs_b, strict=True):
        assert torch.equal(ya, yb)
    assert not torch.equal(_active("crossnorm:crop=both", 4, seed=8)(x), outputs_a[0])


@pytest.mark.parametrize(
    "spec", ["crossnorm", "crossnorm:mode=1ins", "crossnorm:crop=style", "crossnorm:crop=both"]
)
def test_gradcheck(spec: str) -> None:
    x = _x((4, 3, 4, 4)).requires_grad_(True)

    def run(inp: torch.Tensor) -> torch.Tensor:
        layer = _active(spec, 3, seed=5)  # fresh layer: the same partners and boxes on every call
        return layer(inp)

    assert torch.autograd.gradcheck(run, (x,))


def test_policy_activates_active_num_layers_with_probability_p() -> None:
    model = nn.Sequential(*[CrossNorm(4, seed=i) for i in range(5)])
    policy = CrossNormPolicy(model, p=0.5, active_num=2, seed=0)
    activations = []
    for _ in range(400):
        chosen = policy.step()
        assert chosen == [i for i, layer in enumerate(policy.layers) if layer.active]
        assert len(chosen) in (0, 2)
        activations.append(chosen)
    rate = sum(bool(c) for c in activations) / len(activations)
    assert 0.4 < rate < 0.6
    assert {i for c in activations for i in c} == set(range(5))
    policy.off()
    assert not any(layer.active for layer in policy.layers)
    again = CrossNormPolicy(model, p=0.5, active_num=2, seed=0)
    assert [again.step() for _ in range(400)] == activations


def _released_box(rng: np.random.Generator, size: tuple[int, ...], beta: float, bbx_thres: float):
    """The released cn_rand_bbox, transcribed (np.random replaced by `rng`, same draws in the same order)."""
    W, H = size[2], size[3]  # the released names: W indexes dim 2, H dim 3
    while True:
        ratio = rng.beta(beta, beta)
        cut_rat = np.sqrt(ratio)
        cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
        cx, cy = rng.integers(W), rng.integers(H)
        bbx1, bby1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H)
        bbx2, bby2 = np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H)
        if float(bbx2 - bbx1) * (bby2 - bby1) / (W * H) > bbx_thres:
            return int(bbx1), int(bbx2), int(bby1), int(bby2)


@pytest.mark.parametrize(("height", "width"), [(7, 7), (16, 12), (5, 32)])
def test_clipped_boxes_are_the_released_sampler(height: int, width: int) -> None:
    layer = _active("crossnorm:crop=style,boxes=clipped,threshold=0.2,beta=0.5", 4, seed=11)
    for _ in range(200):
        shadow = torch.Generator()
        shadow.set_state(layer.generator.get_state())
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=shadow)))
        assert layer.box(height, width) == _released_box(rng, (1, 1, height, width), 0.5, 0.2)


def test_sampler_strengths_differ_as_measured() -> None:
    # The regularisation the two samplers give, measured (README's table): boxes ~0.55 of the map inside,
    # ~0.3 clipped; a quarter of 4 instances keeps its own statistics under randperm, none by derangement.
    inside = _active("crossnorm:crop=style", 4, seed=0)
    clipped = _active("crossnorm:crop=style,boxes=clipped,pairing=randperm", 4, seed=0)
    area = {}
    for name, layer in (("inside", inside), ("clipped", clipped)):
        boxes = [layer.box(16, 16) for _ in range(3000)]
        area[name] = sum((b - t) * (r - left) for t, b, left, r in boxes) / (256 * len(boxes))
        assert all((b - t) * (r - left) > 0.1 * 256 - (name == "inside") for t, b, left, r in boxes)
    assert 0.52 < area["inside"] < 0.60 and 0.30 < area["clipped"] < 0.37
    selves = sum(int((clipped.partners(4) == torch.arange(4)).sum()) for _ in range(3000)) / 12000
    assert 0.22 < selves < 0.28
    assert not any((inside.partners(4) == torch.arange(4)).any() for _ in range(500))


def test_randperm_pairing_keeps_own_statistics_for_fixed_points() -> None:
    x = _x((4, 3, 6, 6), seed=2)
    layer = _active("crossnorm:pairing=randperm", 3, seed=1)
    for _ in range(20):
        shadow = torch.Generator()
        shadow.set_state(layer.generator.get_state())
        partner = torch.randperm(4, generator=shadow)  # the released torch.randperm pairing
        y = layer(x)
        mu_x, std_x = _stats(x)
        for n, m in enumerate(partner.tolist()):
            expected = (x[n] - mu_x[n, :, None, None]) / std_x[n, :, None, None] * std_x[
                m, :, None, None
            ] + mu_x[m, :, None, None]
            torch.testing.assert_close(y[n], expected)


def test_unknown_pairing_and_boxes_are_clear_errors() -> None:
    from normsearch.errors import NormsearchError

    with pytest.raises(NormsearchError, match=r"crossnorm: pairing must be one of derangement\|randperm"):
        make_norm("crossnorm:pairing=shuffle", 4)
    with pytest.raises(NormsearchError, match=r"crossnorm: boxes must be one of inside\|clipped, got 'free'"):
        make_norm("crossnorm:boxes=free", 4)


@pytest.mark.parametrize(
    "spec", ["crossnorm:crop=content,boxes=clipped", "crossnorm:crop=both,boxes=clipped"]
)
def test_gradcheck_when_the_box_falls_back_to_the_whole_map(spec: str) -> None:
    x = _x((3, 2, 2, 2)).requires_grad_(True)  # a 2×2 map: the clipped sampler never finds a box
    grad = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    before = grad.clone()
    _active(spec, 2, seed=4)(x).backward(grad)
    assert torch.equal(grad, before)  # the incoming gradient is not written to
    assert torch.autograd.gradcheck(lambda inp: _active(spec, 2, seed=4)(inp), (x.detach().requires_grad_(),))
