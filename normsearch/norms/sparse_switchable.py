"""Sparse Switchable Normalization (Shao et al., "SSN: Learning Sparse Switchable Normalization via
SparsestMax", CVPR 2019): SN whose importance ratios end one-hot, so each layer learns exactly one
normalizer for its mean and one for its variance.

SN's softmax (SN Eq. 5) is replaced by SparsestMax: the point of the probability simplex nearest to the
control parameters z that lies at least a radius r from the simplex centre u = 1/K,

    sparsestmax(z; r) = argmin_p ||p - z||^2  s.t.  p >= 0, 1'p = 1, ||p - u|| >= r.

At r = 0 it is sparsemax (Martins & Astudillo 2016), the Euclidean projection onto the simplex; as r grows
past the circumradius sqrt((K-1)/K) (0.816 for the three statistics) only the vertices remain, so the
ratios are one-hot. The computation follows the released `utils/ssn_utils.py`: sparsemax, then, while the
point lies inside the circle, push it radially out to the circle around the centre of its face; if that
leaves the simplex, sparsemax again onto a smaller face, whose circle has radius sqrt(r^2 - |u' - u|^2).
(One detail of the released code is kept: when the first sparsemax already lands on a face, the circle is
drawn around that face's centre with the full radius r, which pushes harder than the exact projection.)

Annealing as released (`train_imagenet.py`): before every training iteration the radius is set to the
fraction of training done, r = (epoch·iters + i) / (epochs·iters), so it rises linearly from 0 to ~1. A layer
is told through `set_progress(fraction)`, and `set_sparse_progress(model, fraction)` tells every one.
Once a ratio vector comes out one-hot it is frozen (the released `mean_fixed` / `var_fixed`): the control
parameters take the one-hot value and receive no more gradient.

Departures from the released code, on purpose: momentum in torch's convention with the SN default 0.1
(released 0.997, torch 0.003, tuned for 100 ImageNet epochs) and running_var starting at 1 (released 0);
statistics in the order [IN, LN, BN] as released; a frozen vector is stored as its index, so an optimizer
that keeps moving the parameter (momentum with `zero_grad(set_to_none=False)`) cannot unfreeze it; when
the sparsemax point sits exactly at the centre (equal control parameters, as at initialisation with a
zero-initialised γ) the push goes toward the first entry, as argmax breaks ties (the released code divides
0 by 0 there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms.switchable import SwitchNorm2d


def _project(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsemax(z) and its support: p = max(z - tau, 0) with tau chosen so that p sums to 1."""
    ordered, _ = torch.sort(z, descending=True)
    cumulative = ordered.cumsum(0) - 1.0
    index = torch.arange(1, z.numel() + 1, dtype=z.dtype, device=z.device)
    rho = int((ordered - cumulative / index > 0).sum())
    tau = cumulative[rho - 1] / rho
    p = torch.clamp(z - tau, min=0.0)
    return p, p > 0


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of a vector z onto the probability simplex (sparsemax, Martins & Astudillo
    2016, Eq. 2 and Alg. 1): SparsestMax at radius 0."""
    return _project(z)[0]


def sparsestmax(z: torch.Tensor, radius: float) -> torch.Tensor:
    """SparsestMax (SSN §3, the released `sparsestmax`): z projected onto the simplex outside the circle of
    `radius` around its centre. Differentiable in z; one-hot once `radius` >= sqrt((K-1)/K)."""
    if z.dim() != 1 or z.numel() < 1:
        raise ValueError(f"sparsestmax: expected a non-empty vector, got shape {tuple(z.shape)}")
    p, support = _project(z)
    source = z
    r = float(radius)
    centre_before: torch.Tensor | None = None
    while True:
        k = int(support.sum())
        if k == 1:
            return support.to(z.dtype)  # a vertex: one-hot, no gradient (the released max - min == 1)
        centre = support.to(z.dtype) / k
        if centre_before is not None:
            r = math.sqrt(max(r * r - float((centre - centre_before).square().sum()), 0.0))
        # p - centre on the support equals the source's deviation from its mean there (tau cancels),
        # which is exactly zero for tied entries instead of rounding noise.
        values = source[support]
        offset = torch.zeros_like(p).masked_scatter(support, values - values.mean())
        distance = float(torch.linalg.vector_norm(offset.detach()))
        if distance >= r:
            return p
        if distance == 0.0:
            offset = torch.zeros_like(p)
            offset[int(support.nonzero()[0])] = 1.0
            offset = (offset - centre).detach()
            distance = float(torch.linalg.vector_norm(offset))
        pushed = centre + r * offset / torch.linalg.vector_norm(offset)
        if float(pushed.detach().min()) >= 0.0:
            return pushed.clamp(0.0, 1.0)
        centre_before = centre
        source = pushed
        p, support = _project(pushed)


class SparseSwitchNorm2d(SwitchNorm2d):
    """Switchable Normalization with SparsestMax ratios (SSN). Training progress arrives through
    `set_progress`; call it before every training iteration (the trainer does, see `set_sparse_progress`).

    Buffers: `radius` (the current SparsestMax radius), `mean_fixed` / `var_fixed` (-1 while the ratio
    vector is still learned, else the index of the statistic it froze on, in [IN, LN, BN] order).
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        last_gamma: bool = False,
        unbiased: bool = True,
    ) -> None:
        super().__init__(
            num_channels, mode="soft", eps=eps, momentum=momentum, last_gamma=last_gamma, unbiased=unbiased
        )
        self.mode = "sparse"
        self.register_buffer("radius", torch.zeros(()))
        self.register_buffer("mean_fixed", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("var_fixed", torch.tensor(-1, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, mode=sparse, radius={float(self.radius):.3f}, "
            f"mean_fixed={int(self.mean_fixed)}, var_fixed={int(self.var_fixed)}, unbiased={self.unbiased}"
        )

    def set_progress(self, fraction: float) -> None:
        """Tell the layer how far training is, in [0, 1]; the radius becomes `fraction` (as released)."""
        if not 0.0 <= float(fraction) <= 1.0:
            raise NormsearchError(f"ssn: training progress must be in [0, 1], got {fraction}")
        self.radius.fill_(float(fraction))

    def _ratio(self, logits: nn.Parameter, fixed: torch.Tensor, freeze: bool) -> torch.Tensor:
        if int(fixed) >= 0:
            return nn.functional.one_hot(fixed, 3).to(logits.dtype)
        ratio = sparsestmax(logits, float(self.radius))
        if freeze and int((ratio > 0).sum()) == 1:
            with torch.no_grad():
                fixed.fill_(int(ratio.argmax()))
                logits.copy_(ratio)
            return ratio.detach()
        return ratio

    def ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current SparsestMax ratios (w_in, w_ln, w_bn) for the mean and for the variance."""
        return (
            self._ratio(self.mean_weight, self.mean_fixed, freeze=False),
            self._ratio(self.var_weight, self.var_fixed, freeze=False),
        )

    @float32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As released, any forward that finds a ratio vector one-hot freezes it.
        wm = self._ratio(self.mean_weight, self.mean_fixed, freeze=True)
        wv = self._ratio(self.var_weight, self.var_fixed, freeze=True)
        return self._mix(x, wm, wv)


def sparse_layers(model: nn.Module) -> list[SparseSwitchNorm2d]:
    """Every SSN layer of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, SparseSwitchNorm2d)]


def set_sparse_progress(model: nn.Module, fraction: float) -> int:
    """Set the SparsestMax radius of every SSN layer of `model` to `fraction` of training done (SSN's
    annealing schedule as released: call before each training iteration with
    ``(epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)``). Returns how many layers were set."""
    layers = sparse_layers(model)
    for layer in layers:
        layer.set_progress(fraction)
    return len(layers)


def sparse_control_parameters(model: nn.Module | Iterable[SparseSwitchNorm2d]) -> list[nn.Parameter]:
    """The SSN ratio parameters (`mean_weight`, `var_weight`) of every SSN layer: the released trainer
    gives them their own optimizer group (a tenth of the learning rate, no weight decay) and clips their
    gradient norm to 1."""
    layers = sparse_layers(model) if isinstance(model, nn.Module) else list(model)
    return [p for layer in layers for p in (layer.mean_weight, layer.var_weight)]
