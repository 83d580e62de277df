"""Feature divergence between two domains (IBN-Net, Pan et al., ECCV 2018, §4.3, Eq. 1-3).

For one layer's output, each channel's mean activation over the spatial positions of an image, F_i, is
modelled as a Gaussian over the images of a domain, N(mu, sigma^2). The divergence of channel i between
domains A and B is the symmetric KL divergence of the two Gaussians (Eq. 1, 2),

    D(F_A || F_B) = KL(F_A || F_B) + KL(F_B || F_A),
    KL(F_A || F_B) = log(sigma_B / sigma_A) + (sigma_A^2 + (mu_A - mu_B)^2) / (2 sigma_B^2) - 1/2,

so that the log terms cancel and D = (sigma_A^2 + d^2) / (2 sigma_B^2) + (sigma_B^2 + d^2) / (2 sigma_A^2) - 1
with d = mu_A - mu_B; the layer's divergence is the mean over its C channels (Eq. 3). The Gaussians are fit
by maximum likelihood (the variance divides by N). A channel that is constant over images (after an
instance normalization each channel's spatial mean *is* its bias) has zero variance; `eps` is added to every
variance so that such a channel contributes (eps + d^2) / eps - 1 instead of 0/0, which is 0 when the two
domains agree.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def channel_means(activation: torch.Tensor) -> torch.Tensor:
    """F of Eq. 1 for every image and channel: the spatial mean of an (N, C, H, W) map, as (N, C) float64."""
    if activation.dim() == 2:
        return activation.double()
    return activation.detach().double().flatten(2).mean(2)


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood mean and variance per channel of (N, C) channel means."""
    features = features.double()
    return features.mean(0), features.var(0, unbiased=False)


def symmetric_kl(
    mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Eq. 1-2 per channel: KL(A||B) + KL(B||A) of N(mu_a, var_a) and N(mu_b, var_b), `eps` added to both
    variances."""
    va, vb = var_a + eps, var_b + eps
    d2 = (mu_a - mu_b) ** 2
    return (va + d2) / (2 * vb) + (vb + d2) / (2 * va) - 1.0


def feature_divergence(features_a: torch.Tensor, features_b: torch.Tensor, eps: float = EPS) -> float:
    """Eq. 3: the layer's divergence between domains A and B, from their (N, C) channel means (or their
    (N, C, H, W) maps): the mean over channels of the symmetric KL divergence."""
    mu_a, var_a = gaussian(channel_means(features_a))
    mu_b, var_b = gaussian(channel_means(features_b))
    return float(symmetric_kl(mu_a, var_a, mu_b, var_b, eps).mean())
