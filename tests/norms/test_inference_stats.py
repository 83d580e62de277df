"""Test-time statistics policies against hand computations: AdaBN's re-estimated statistics on the target
images, `mix` as the convex combination of running and batch statistics, `batch` as training-mode BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms import make_norm
from normsearch.norms.running import StatsPolicy, inference_statistics, statistics_statement


def _bn(x, mean, var, gamma, beta, eps=1e-5):
    c = (1, -1, 1, 1)
    return gamma.view(c) * (x - mean.view(c)) / torch.sqrt(var.view(c) + eps) + beta.view(c)


def _moments(x):
    # Over (N, H, W) per channel: mean, biased and unbiased variance, written out.
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.sum(dim=(0, 2, 3)) / n
    ss = ((x - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
    return mean, ss / n, ss / (n - 1)


def _network() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
    )
    net = net.double()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    return net.eval()


def test_adabn_statistics_are_the_target_images_own() -> None:
    net = _network()
    before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in (net[1], net[4])]
    target = torch.randn(6, 3, 8, 8, dtype=torch.float64) * 2 + 0.5
    batches = [target[:3], target[3:]]
    # By hand: per batch, layer 1's input moments; layer 2's input is layer 1 normalized with the batch's
    # own statistics (re-estimation runs BN in training mode); the estimate is the mean over batches.
    stats1, stats2 = [], []
    for x in batches:
        h = net[0](x)
        m, biased, unbiased = _moments(h)
        stats1.append((m, unbiased))
        h2 = net[3](torch.relu(_bn(h, m, biased, net[1].weight, net[1].bias)))
        m2, _, unbiased2 = _moments(h2)
        stats2.append((m2, unbiased2))
    with inference_statistics(net, "adabn", lambda: iter(batches)):
        for bn, stats in ((net[1], stats1), (net[4], stats2)):
            torch.testing.assert_close(bn.running_mean, (stats[0][0] + stats[1][0]) / 2)
            torch.testing.assert_close(bn.running_var, (stats[0][1] + stats[1][1]) / 2)
        assert not net.training and not net[1].training
    for bn, (mean, var) in zip((net[1], net[4]), before, strict=True):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


def test_mix_is_the_convex_combination_of_running_and_batch_statistics() -> None:
    bn = nn.BatchNorm2d(4).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64) * 3 + 1
    mean, biased, _ = _moments(x)
    alpha = 0.3
    expected = _bn(
        x,
        alpha * bn.running_mean + (1 - alpha) * mean,
        alpha * bn.running_var + (1 - alpha) * biased,
        bn.weight,
        bn.bias,
    )
    with torch.no_grad(), inference_statistics(bn, "mix:alpha=0.3"):
        torch.testing.assert_close(bn(x), expected)
    with torch.no_grad():  # left: the running statistics again
        torch.testing.assert_close(bn(x), _bn(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))


def test_batch_is_training_mode_batchnorm_without_touching_the_running_statistics() -> None:
    bn = nn.BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 5, 5) * 2
    reference = nn.BatchNorm2d(3).train()
    reference.load_state_dict(bn.state_dict())
    with torch.no_grad(), inference_statistics(bn, "batch") as policy:
        torch.testing.assert_close(bn(x), reference(x))
        assert policy.uses_test_images
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0


def test_ibn_mix_acts_on_the_bn_part_only() -> None:
    torch.manual_seed(1)
    ibn = make_norm("ibn:ratio=0.5", 6).eval()  # IN on channels 0-2, BN on 3-5
    with torch.no_grad():
        ibn.running_mean.uniform_(-1, 1), ibn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 6, 5, 5)
    with torch.no_grad():
        plain = ibn(x)
        with inference_statistics(ibn, "mix:alpha=0.5"):
            mixed = ibn(x)
    torch.testing.assert_close(mixed[:, :3], plain[:, :3])  # the IN part does not change
    mean, biased, _ = _moments(x[:, 3:])
    expected = _bn(
        x[:, 3:],
        0.5 * ibn.running_mean + 0.5 * mean,
        0.5 * ibn.running_var + 0.5 * biased,
        ibn.weight[3:],
        ibn.bias[3:],
    )
    torch.testing.assert_close(mixed[:, 3:], expected)


def test_policy_text_round_trips_and_bad_text_is_one_clear_error() -> None:
    for text in ("running", "batch", "adabn", "mix:alpha=0.25"):
        assert str(StatsPolicy.parse(text)) == text
    assert not StatsPolicy.parse("running").uses_test_images
    assert not StatsPolicy.parse("mix:alpha=1.0").uses_test_images
    for bad in ("tent", "mix", "mix:alpha=2", "batch:alpha=0.5", "mix:beta=0.5"):
        with pytest.raises(NormsearchError, match="test-time statistics"):
            StatsPolicy.parse(bad)


def test_the_statement_names_every_policy_and_which_adapt_to_the_test_domain() -> None:
    assert statistics_statement([]) == "test-time statistics: running (BN running averages from training)"
    text = statistics_statement(["running", "adabn", "mix:alpha=0.5", "adabn"])
    assert text == (
        "test-time statistics: adabn, mix:alpha=0.5, running; adabn, mix:alpha=0.5 use unlabelled "
        "test-domain images (test-time adaptation, not plain DG)"
    )
