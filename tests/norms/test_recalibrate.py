from __future__ import annotations

import torch
from torch import nn

from normsearch.norms import make_norm, recalibrate_bn


def _batches(n: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + i) + i for i in range(n)]


def test_precise_statistics_are_the_exact_average_over_fed_batches() -> None:
    # Three BN-like layers side by side on the input, so each sees exactly the fed batches.
    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(6)
            self.ibn = make_norm("ibn:ratio=0.5", 6)
            self.sn = make_norm("sn:unbiased=false", 6)
            self.cn = make_norm("crossnorm", 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x) + self.ibn(x) + self.sn(self.cn(x))

    model = Parallel().double()
    model.cn.active = True
    model.train()
    for batch in _batches(4, (5, 6, 4, 4), seed=9):  # some training history to be replaced
        model(batch)
    weights_before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k
    }
    batches = _batches(5, (5, 6, 4, 4))
    fed = recalibrate_bn(model, iter(batches), n=3)
    assert fed == 3

    used = torch.stack(batches[:3])  # (3, N, C, H, W)
    count = 5 * 4 * 4
    means = used.mean(dim=(1, 3, 4))  # per batch, per channel
    variances = used.var(dim=(1, 3, 4), unbiased=False) * count / (count - 1)
    torch.testing.assert_close(model.bn.running_mean, means.mean(0))
    torch.testing.assert_close(model.bn.running_var, variances.mean(0))
    torch.testing.assert_close(model.ibn.running_mean, means.mean(0)[3:])
    torch.testing.assert_close(model.ibn.running_var, variances.mean(0)[3:])
    torch.testing.assert_close(model.sn.running_mean, means.mean(0))
    torch.testing.assert_close(model.sn.running_var, variances.mean(0))

    # Weights unchanged, modes and momenta restored.
    for key, value in weights_before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.training and model.bn.training and model.bn.momentum == 0.1 and model.sn.momentum == 0.1


def test_accepts_input_label_tuples_and_stops_early() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    data = [(b, torch.zeros(2)) for b in _batches(2, (2, 3, 5, 5))]
    assert recalibrate_bn(model, data, n=10) == 2
    assert int(model[1].num_batches_tracked) == 2
