"""Why a configuration generalizes: the papers' own analyses on the user's trained network.

- `divergence`: IBN-Net's feature divergence between domains (Pan et al. 2018, §4.3, Eq. 1-3);
- `estimation_shift`: XBNBlock's estimation shift of BN statistics (Huang et al. 2022, §4.2, Definition 2);
- `sn_ratios`: the importance ratios a Switchable Norm layer learned (Luo et al. 2019, Fig. 5);
- `diagnose`: runs all three over a network's normalization slots (forward hooks on the NormPlan's slot
  names, which are the model's own module names) and writes tables and plots.

Nothing here imports the search, Ray or a particular network family.
"""

from __future__ import annotations

from normsearch.analysis.divergence import channel_means, feature_divergence, symmetric_kl
from normsearch.analysis.estimation_shift import InputMoments, estimation_shift, running_statistics
from normsearch.analysis.sn_ratios import SNRatios, sn_ratios

__all__ = [
    "InputMoments",
    "SNRatios",
    "channel_means",
    "estimation_shift",
    "feature_divergence",
    "running_statistics",
    "sn_ratios",
    "symmetric_kl",
]
