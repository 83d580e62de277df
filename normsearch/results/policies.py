"""Test-time statistics policies in results: how a (trial, policy) row is labelled, and an exported row
rebuilt from its file and weights and measured again under its policy (`normsearch export --trial T
--policy P --weights W --test`).

A row measured under a policy that reads unlabelled test-domain images (batch, adabn, mix) is labelled so
in every table, next to the header's statement: it is test-time adaptation, never a silent plain-DG number.
The rebuilt network reads nothing of the run but the exported document (its `arch`, whose
`norm.inference` is the row's policy) and the weights file; the images and the input standardisation are
the run recipe's, fitted exactly as training fitted them; the measurement is the one training made after
its last epoch (`train.evaluation.final_accuracies`, same batches, same precision), so on the same machine
and thread count the numbers equal the recorded ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from normsearch.arch import ArchConfig
from normsearch.config import read_mapping
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.norms.running import ADAPTATION, StatsPolicy
from normsearch.recipe import Recipe
from normsearch.run.records import TrialRecord, own_policy

POLICY_COLUMN = "test-time stats"


def policy_label(policy: str | None) -> str:
    """A row's policy as tables label it: ``running`` is plain domain generalization; any policy that reads
    unlabelled test-domain images says so (test-time adaptation)."""
    parsed = StatsPolicy.parse(policy or "running")
    if not parsed.uses_test_images:
        return f"test-time statistics {parsed} (BN running averages from training)"
    return f"test-time statistics {parsed}: uses unlabelled test-domain images ({ADAPTATION})"


def policy_cell(trial: TrialRecord) -> str:
    """A row's test-time statistics policy, marked when it reads unlabelled test-domain images (test-time
    adaptation; the header's statement says so in full): never a silent plain-DG number."""
    policy = StatsPolicy.parse(own_policy(trial))
    return f"{policy} (TTA: test images)" if policy.uses_test_images else str(policy)


def has_policies(rows: list[TrialRecord]) -> bool:
    """Whether a table of `rows` needs the policy column: some row was measured under other test-time
    statistics than the running averages (a column that would only ever say ``running`` is left out; the
    header's statement names the statistics either way)."""
    return any(own_policy(r) != "running" for r in rows)


def policy_cells(trial: TrialRecord, shown: bool) -> list[str]:
    """The row's policy cell when the table has the column (`has_policies`), else nothing."""
    return [policy_cell(trial)] if shown else []


def evaluate_export(recipe: Recipe, document: Path, weights: Path) -> dict[str, float]:
    """The test accuracies of the network `document` + `weights` describe, on `recipe`'s (single) training
    unit, measured under the document's `norm.inference` policy."""
    # Training's modules load only to evaluate an export; reading a run (show, report) stays without them.
    from normsearch.train import _standardizer, autocast, final_accuracies, unit_sets

    units = recipe.data.units()
    if len(units) != 1:
        raise NormsearchError(f"{document}: re-evaluating needs a run of one training unit, not {len(units)}")
    raw = read_mapping(document)
    if not isinstance(raw.get("arch"), dict):
        raise NormsearchError(f"{document}: no `arch` section")
    data = load_data(recipe.data)
    arch = ArchConfig.from_dict(raw["arch"], str(document))
    arch = arch.model_copy(
        update={"backbone": arch.backbone.model_copy(update={"num_classes": data.num_classes})}
    )
    model = build_model(arch, weights=weights).eval()
    standardize = _standardizer(arch, recipe.data, unit_sets(data, units[0], lambda t: t))
    with torch.no_grad(), autocast(torch.device("cpu"), recipe.train.precision):
        return final_accuracies(model, data, units[0], standardize, arch.norm.inference)
