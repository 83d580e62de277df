"""Sparse SN against the SSN paper's definitions and the released `sparsestmax`, written out here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms import (
    SparseSwitchNorm2d,
    SwitchNorm2d,
    make_norm,
    set_sparse_progress,
    sparse_control_parameters,
    sparsemax,
    sparsestmax,
)
from tests.norms.formulas import channel, in_stats, normalize

R_C = math.sqrt(2.0 / 3.0)  # circumradius of the 3-simplex: the radius past which only vertices remain


def _released_sparsestmax(v: torch.Tensor, rad: float, u_in: torch.Tensor | None = None) -> torch.Tensor:
    """The released utils/ssn_utils.py, transcribed; its one-hot test (max - min == 1) is read as "one
    entry left", the intent of the float comparison."""
    ordered, _ = torch.sort(v, descending=True)
    cssv = ordered.cumsum(0) - 1
    ind = torch.arange(1, len(v) + 1, dtype=v.dtype)
    cond = ordered - cssv / ind > 0
    rho = ind[cond][-1]
    w = torch.clamp(v - cssv[cond][-1] / rho, min=0)
    if int((w > 0).sum()) == 1:
        return (w > 0).to(v.dtype)
    u = (w > 0).to(v.dtype) / (w > 0).sum()
    rad = rad if u_in is None else math.sqrt(rad**2 - float(((u - u_in) ** 2).sum()))
    distance = torch.linalg.vector_norm(w - u)
    if distance >= rad:
        return w
    p = rad * (w - u) / distance + u
    if p.min() < 0:
        return _released_sparsestmax(p, rad, u)
    return p.clamp(0, 1)


def _simplex_grid(step: float = 0.0025) -> torch.Tensor:
    n = round(1 / step)
    a, b = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = a + b <= n
    a, b = a[keep].double() / n, b[keep].double() / n
    return torch.stack([a, b, 1 - a - b], dim=1)


def test_sparsemax_is_the_euclidean_projection_onto_the_simplex() -> None:
    # Hand-made: tau = -0.2/3 for [0.5, 0.2, 0.1], and one entry left when the gap exceeds 1.
    torch.testing.assert_close(sparsemax(torch.tensor([0.5, 0.2, 0.1])), torch.tensor([17, 8, 5]) / 30.0)
    assert torch.equal(sparsemax(torch.tensor([2.0, 0.5, -1.0])), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(sparsemax(torch.tensor([0.8, 0.6, -3.0])), torch.tensor([0.6, 0.4, 0.0]))
    grid = _simplex_grid()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        z = torch.randn(3, generator=gen, dtype=torch.float64)
        nearest = grid[(grid - z).square().sum(1).argmin()]
        torch.testing.assert_close(sparsemax(z), nearest, atol=3e-3, rtol=0)


def test_radius_zero_is_sparsemax_and_softmax_at_equal_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        z = torch.randn(3, generator=gen, dtype=torch.float64)
        assert torch.equal(sparsestmax(z, 0.0), sparsemax(z))
    ones = torch.ones(3)  # SN's initial control parameters: softmax, sparsemax and sparsestmax agree
    torch.testing.assert_close(sparsestmax(ones, 0.0), ones.softmax(0))


def test_inside_the_circle_is_the_constrained_projection() -> None:
    # SSN's definition: argmin ||p - z|| over the simplex with ||p - u|| >= r. Checked against a fine grid
    # of feasible points where sparsemax lands inside the simplex and r is below the inscribed radius
    # 1/sqrt(6) (the case where the released computation is exact): the result is feasible and no grid
    # point is closer to z.
    grid = _simplex_grid(0.002)
    u = torch.full((3,), 1 / 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    checked = 0
    while checked < 10:
        z = torch.randn(3, generator=gen, dtype=torch.float64) * 0.2
        r = float(torch.rand((), generator=gen)) * 0.4
        if (sparsemax(z) <= 0).any():
            continue
        p = sparsestmax(z, r)
        assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12 and float((p - u).norm()) >= r - 1e-12
        feasible = grid[(grid - u).norm(dim=1) >= r]
        assert float((p - z).square().sum()) <= float((feasible - z).square().sum(1).min()) + 1e-12
        checked += 1


def test_matches_the_released_sparsestmax() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(500):
        z = torch.randn(3, generator=gen, dtype=torch.float64)
        r = float(torch.rand((), generator=gen))
        torch.testing.assert_close(sparsestmax(z, r), _released_sparsestmax(z, r), rtol=0, atol=1e-12)


def test_one_hot_at_the_end_of_the_schedule() -> None:
    # The released schedule ends at r = 1 > sqrt(2/3): every input, ties included, ends on a vertex.
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(3, generator=gen) for _ in range(200)]
    inputs += [torch.ones(3), torch.tensor([1.0, 1.0, 0.0])]
    for z in inputs:
        for r in (R_C + 1e-3, 1.0):
            p = sparsestmax(z, r)
            assert sorted(p.tolist()) == [0.0, 0.0, 1.0], (z, r, p)
    # A one-hot sparsemax point off 1 by rounding stays one-hot (the released test max - min == 1 misses it).
    z = torch.tensor([-1.1258, -0.0687, -1.4853], dtype=torch.float64)
    assert sparsestmax(z, 0.24).tolist() == [0.0, 1.0, 0.0]
    # Ties are pushed toward the first entry, as argmax breaks them.
    assert sparsestmax(torch.ones(3), 0.9).tolist() == [1.0, 0.0, 0.0]


def _ssn_reference(x: torch.Tensor, layer: SparseSwitchNorm2d) -> torch.Tensor:
    """SN Eq. 3 with the released unbiased IN variance and Eq. 4, ratios from sparsestmax."""
    radius = float(layer.radius)
    wm = _released_sparsestmax(layer.mean_weight.detach(), radius)
    wv = _released_sparsestmax(layer.var_weight.detach(), radius)
    m_in, v_in = in_stats(x, unbiased=True)
    temp = v_in + m_in**2
    m_ln, m_bn = m_in.mean(1, keepdim=True), m_in.mean(0, keepdim=True)
    v_ln, v_bn = temp.mean(1, keepdim=True) - m_ln**2, temp.mean(0, keepdim=True) - m_bn**2
    mean = wm[0] * m_in + wm[1] * m_ln + wm[2] * m_bn
    var = wv[0] * v_in + wv[1] * v_ln + wv[2] * v_bn
    return normalize(x, mean, var) * channel(layer.weight.detach()) + channel(layer.bias.detach())


def _x(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, 5, 4, generator=gen, dtype=torch.float64) * 2 + 0.7


def test_layer_is_eq3_with_sparsestmax_ratios_and_sn_at_initialisation() -> None:
    x = _x()
    ssn = make_norm("ssn", 8).double()
    sn = SwitchNorm2d(8).double()
    torch.testing.assert_close(ssn(x), sn(x), rtol=1e-12, atol=1e-12)  # equal logits, radius 0: uniform
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ssn.mean_weight.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
        ssn.var_weight.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
        ssn.weight.uniform_(0.5, 1.5, generator=gen)
    ssn.set_progress(0.3)
    torch.testing.assert_close(ssn(x), _ssn_reference(x, ssn), rtol=1e-10, atol=1e-10)


def test_one_hot_ratios_freeze_and_stay_frozen() -> None:
    ssn = SparseSwitchNorm2d(8).double()
    with torch.no_grad():
        ssn.mean_weight.copy_(torch.tensor([0.1, 0.2, 0.9]))
        ssn.var_weight.copy_(torch.tensor([0.5, 0.1, 0.2]))
    ssn.set_progress(0.9)
    y = ssn(_x())
    assert (int(ssn.mean_fixed), int(ssn.var_fixed)) == (2, 0)  # BN mean, IN variance
    assert ssn.mean_weight.tolist() == [0.0, 0.0, 1.0] and ssn.var_weight.tolist() == [1.0, 0.0, 0.0]
    y.sum().backward()
    assert ssn.mean_weight.grad is None and ssn.var_weight.grad is None  # no gradient once frozen
    with torch.no_grad():
        ssn.mean_weight.add_(5.0)  # an optimizer moving the parameter does not unfreeze it
    ssn.set_progress(0.0)
    wm, wv = ssn.ratios()
    assert wm.tolist() == [0.0, 0.0, 1.0] and wv.tolist() == [1.0, 0.0, 0.0]
    hard = ssn.to_hard()
    assert (hard.mode, hard.mean_choice, hard.var_choice) == ("hard", "bn", "in")


def test_annealed_training_ends_with_one_normalizer_per_layer() -> None:
    # A real (small) training run with the released schedule: radius = fraction of iterations done.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), make_norm("ssn", 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), make_norm("ssn:last_gamma=true", 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip
    control = sparse_control_parameters(model)
    assert len(control) == 4
    others = [p for p in model.parameters() if all(p is not q for q in control)]
    optimizer = torch.optim.SGD([{"params": others}, {"params": control, "lr": 0.01}], lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    steps = 40
    for step in range(steps):
        assert set_sparse_progress(model, step / steps) == 2
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for layer in (model[1], model[4]):
        assert int(layer.mean_fixed) >= 0 and int(layer.var_fixed) >= 0, layer
        for ratio in layer.ratios():
            assert sorted(ratio.tolist()) == [0.0, 0.0, 1.0]


def test_bad_progress_is_a_clear_error() -> None:
    with pytest.raises(NormsearchError, match=r"ssn: training progress must be in \[0, 1\], got 1.5"):
        make_norm("ssn", 4).set_progress(1.5)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(training: bool) -> None:
    ssn = make_norm("ssn", 5).double()
    with torch.no_grad():
        ssn.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        ssn.var_weight.copy_(torch.tensor([0.1, 0.4, -0.3]))
    ssn.set_progress(0.2)
    ssn(torch.randn(4, 5, 3, 3, dtype=torch.float64))
    ssn.train(training)
    x = torch.randn(3, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(ssn.parameters())
    assert torch.autograd.gradcheck(lambda inp, *_: ssn(inp), (x, *params))
