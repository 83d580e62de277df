"""Running statistics for our BN-like layers, batch-average ("precise BN") recalibration, and the
test-time statistics policies.

`RunningStats` follows torch's `_BatchNorm` conventions exactly: `momentum` is the weight of the new
batch (torch's 0.1 is the released SN code's 0.9), `momentum=None` means a cumulative average over the
batches seen since the last `reset_running_stats()`, `running_var` starts at 1.

Test-time statistics (`StatsPolicy`, applied by `inference_statistics`), for every BN-like layer: torch's
BatchNorm (SelfNorm's BatchNorm1d included), IBN's BN part and Switchable Norm's BN part (IN, LN and GN parts
are per-sample anyway and are left alone; so is DSON, whose per-domain branches keep their running
statistics):

- ``running``: the running averages from training (the default; plain domain generalization).
- ``batch``: each test batch's own mean and (biased) variance, prediction-time BN (Nado et al., "Evaluating
  Prediction-Time Batch Normalization for Robustness under Covariate Shift", 2020).
- ``adabn``: statistics re-estimated on the evaluated domain's unlabelled images, then fixed (AdaBN; Li et
  al., "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR-W 2017, Alg. 1), with the
  batch average of `recalibrate_bn`: the mean of the per-batch means and unbiased variances.
- ``mix:alpha=A``: μ = A·μ_running + (1 − A)·μ_batch and σ² = A·σ²_running + (1 − A)·σ²_batch (Schneider
  et al., "Improving robustness against common corruptions by covariate shift adaptation", NeurIPS 2020,
  Eq. 2 with A = N / (N + n)). A = 1 is ``running``, A = 0 is ``batch``.

Every policy but ``running`` (and ``mix:alpha=1``) uses unlabelled images of the test domain: the test-time
adaptation assumption, which a plain domain-generalization comparison does not make (`uses_test_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normsearch.errors import NormsearchError


class RunningStats(nn.Module):
    """Mixin for layers that keep BN running statistics over `num_features` channels."""

    momentum: float | None

    def _init_running(self, num_features: int, momentum: float | None) -> None:
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def _count_batch(self) -> float:
        """Count one more training batch; return the weight of its statistics in the running average."""
        self.num_batches_tracked.add_(1)
        return self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        weight = self._count_batch()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var.lerp_(var.to(self.running_var.dtype), weight)

    def _native_batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """`nn.BatchNorm2d`'s forward on this layer's buffers: batch statistics and a running-average
        update in training, running statistics in eval."""
        factor = self._count_batch() if self.training else 0.0
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, factor, eps)


def _is_bn_like(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm | RunningStats) and getattr(
        module, "track_running_stats", True
    )


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise NormsearchError("recalibrate_bn: each batch must be a tensor or a (inputs, ...) tuple")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], n: int) -> int:
    """Set every BN-like layer's running statistics to their exact average over `n` batches.

    Switchable Normalization §3 "Inference" (batch average): freeze the network, feed mini-batches from
    the training set, and average the means and variances each BN part produced. Every other layer
    runs in eval mode (so CrossNorm is off and SelfNorm uses its running statistics), weights do not
    change. Covers `nn.BatchNorm*`, IBN's BN part and SwitchNorm's BN part. Returns the number of
    batches actually fed (fewer than `n` if `batches` runs out).
    """
    if n < 1:
        raise NormsearchError(f"recalibrate_bn: n must be >= 1, got {n}")
    layers = [m for m in model.modules() if _is_bn_like(m)]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: exactly the mean over the fed batches
            layer.train()
        fed = 0
        for batch in islice(batches, n):
            model(_first_tensor(batch))
            fed += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    if fed == 0:
        raise NormsearchError("recalibrate_bn: no batches were given")
    return fed


POLICIES = ("running", "batch", "adabn", "mix")
ADAPTATION = "test-time adaptation, not plain DG"


@dataclass(frozen=True)
class StatsPolicy:
    """Which statistics the BN-like layers normalize with at test time (see the module docstring)."""

    kind: str = "running"
    alpha: float | None = None  # mix only

    @classmethod
    def parse(cls, text: str | StatsPolicy) -> StatsPolicy:
        """``running``, ``batch``, ``adabn`` or ``mix:alpha=A`` with A in [0, 1]."""
        if isinstance(text, StatsPolicy):
            return text
        kind, _, rest = str(text).strip().lower().partition(":")
        if kind not in POLICIES:
            raise NormsearchError(
                f"test-time statistics {text!r}: allowed: running, batch, adabn, mix:alpha=A (A in [0, 1])"
            )
        if kind != "mix":
            if rest:
                raise NormsearchError(f"test-time statistics {text!r}: {kind} takes no parameters")
            return cls(kind)
        key, eq, value = rest.partition("=")
        try:
            alpha = float(value)
        except ValueError:
            alpha = -1.0
        if key.strip() != "alpha" or not eq or not 0.0 <= alpha <= 1.0:
            raise NormsearchError(f"test-time statistics {text!r}: write mix:alpha=A with A in [0, 1]")
        return cls("mix", alpha)

    def __str__(self) -> str:
        return f"mix:alpha={self.alpha!r}" if self.kind == "mix" else self.kind

    @property
    def uses_test_images(self) -> bool:
        """Whether the policy reads (unlabelled) images of the test domain: the test-time adaptation
        assumption."""
        return not (self.kind == "running" or (self.kind == "mix" and self.alpha == 1.0))


def bn_like_layers(model: nn.Module) -> list[nn.Module]:
    """The layers the policies act on: torch BatchNorm, IBN's and Switchable Norm's BN parts."""
    return [m for m in model.modules() if _is_bn_like(m)]


def _saved(layers: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    return [{n: getattr(m, n).clone() for n in names if getattr(m, n, None) is not None} for m in layers]


@torch.no_grad()
def _restore(layers: list[nn.Module], saved: list[dict[str, torch.Tensor]]) -> None:
    for layer, state in zip(layers, saved, strict=True):
        for name, value in state.items():
            getattr(layer, name).copy_(value)


def batch_statistics(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean and biased variance over (N, H, W) of the channels `layer` keeps running statistics
    for (the last ones: IBN's BN part follows its IN channels)."""
    k = layer.running_mean.numel()
    part = x[:, x.shape[1] - k :].float()
    dims = [0, *range(2, part.dim())]
    return part.mean(dims), part.var(dims, unbiased=False)


def _mixing_hooks(layers: list[nn.Module], alpha: float) -> list[Any]:
    """Hooks that, around each forward, set the running statistics to α·running + (1 − α)·batch."""
    saved: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        mean, var = batch_statistics(module, args[0])
        rm, rv = module.running_mean, module.running_var
        saved[module] = (rm.clone(), rv.clone())
        rm.copy_(alpha * rm + (1 - alpha) * mean.to(rm.dtype))
        rv.copy_(alpha * rv + (1 - alpha) * var.to(rv.dtype))

    @torch.no_grad()
    def after(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        rm, rv = saved.pop(module)
        module.running_mean.copy_(rm)
        module.running_var.copy_(rv)

    handles = [m.register_forward_pre_hook(before) for m in layers]
    return handles + [m.register_forward_hook(after) for m in layers]


@contextmanager
def inference_statistics(
    model: nn.Module,
    policy: StatsPolicy | str,
    images: Callable[[], Iterable[Any]] | None = None,
    n: int = 1_000_000,
) -> Iterator[StatsPolicy]:
    """Within the block, `model` (in eval mode) normalizes its BN-like layers under `policy`; on leaving
    it, every running statistic is what it was. ``adabn`` re-estimates on up to `n` batches of
    `images()` (the evaluated domain's unlabelled images, standardised as the model's input)."""
    policy = StatsPolicy.parse(policy)
    layers = bn_like_layers(model)
    if policy.kind == "running" or not layers:
        yield policy
        return
    saved = _saved(layers)
    handles: list[Any] = []
    try:
        if policy.kind == "adabn":
            if images is None:
                raise NormsearchError("adabn: needs the test domain's images to re-estimate statistics on")
            recalibrate_bn(model, images(), n)
        else:
            handles = _mixing_hooks(layers, 0.0 if policy.kind == "batch" else float(policy.alpha))
        yield policy
    finally:
        for handle in handles:
            handle.remove()
        _restore(layers, saved)


def statistics_statement(policies: Iterable[StatsPolicy | str]) -> str:
    """The line every results header carries: which test-time statistics the numbers were measured with,
    and which of those policies read unlabelled test-domain images (test-time adaptation)."""
    parsed = sorted({str(StatsPolicy.parse(p)): StatsPolicy.parse(p) for p in policies}.items()) or [
        ("running", StatsPolicy())
    ]
    text = "test-time statistics: " + ", ".join(name for name, _ in parsed)
    adapting = [name for name, policy in parsed if policy.uses_test_images]
    if not adapting:
        return text + " (BN running averages from training)"
    verb = "uses" if len(adapting) == 1 else "use"
    return f"{text}; {', '.join(adapting)} {verb} unlabelled test-domain images ({ADAPTATION})"
