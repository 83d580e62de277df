"""The record schema and the one list of metric names.

A run's trials.jsonl holds one JSON record per event of a trial, appended as it happens. Every record has::

    trial_id   the trial's stable key ("t003": its number in the Optuna study), the same across resumes
    status     running | complete | pruned | failed | interrupted | repeat
    time, config (the sampled values), arch (the ArchConfig), seed, attempt, versions

and, where they apply: ``epoch``, ``final``, ``metrics`` (what the trial reported; names below), ``test``
(test-domain accuracies, once, after the last epoch), ``reason`` (why a trial failed, was stopped, or was not
trained), ``repeat_of`` (the trial whose result a repeated configuration reuses), ``resumed_from`` (the
epoch a continued trial started from), ``node_id``/``worker``/``device``, ``confirm_of`` (a confirmation
run of a search trial: the same configuration re-trained with a new model seed by `normsearch confirm`,
trial id ``t003/s<seed>``; never a search trial, see `RunFolder.trials`), ``extra.policies`` (a network
evaluated under several test-time statistics policies, a space's `policies`: {policy: {"metrics", "test"}}
for each policy but the network's own, `arch.norm.inference`, whose numbers are the record's `metrics` and
`test`; `policy_rows` turns a trial into one row per (trial, policy), what results tables and the front
are made of).

A trial's state is the fold of its records: the last status wins, except that a finished trial (complete,
pruned, failed, repeat) never goes back to running; metrics and test accuracies carry forward. A candidate
trained once per protocol unit (several sources held out in turn, leave-one-domain-out) has one record per
unit (``trial_id`` ``t003@<unit>``, ``unit``) and, when the last unit ends, its own record (``t003``) with
the units' combined numbers. This module imports only the leaves (metrics, config, errors) at import
time (`config_key` imports arch, and so torch, when called), so that every layer (the recipe's objective
check included) can take the record schema from here without torch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from normsearch.config import validate
from normsearch.errors import NormsearchError
from normsearch.metrics import POLICIES, RESULT_KEYS, SELECT_PREFIX, SOURCE_PREFIX

# Metrics a trial reports every epoch, with the direction in which each is better. Objectives, tables,
# the study's metric names and the Ray result are all built from this list (plus `select/<domain>`).
STATUSES = ("running", "complete", "pruned", "failed", "interrupted", "repeat")
FINISHED = frozenset({"complete", "pruned", "failed", "repeat"})


def trial_key(number: int) -> str:
    """The stable trial id of the study's trial `number`."""
    return f"t{number:03d}"


UNIT_SEPARATOR = "@"
CONFIRM_SEPARATOR = "/"


def confirm_trial_id(key: str, seed: int) -> str:
    """The id of the confirmation run of search trial `key` with model seed `seed` ("t003/s1")."""
    return f"{key}{CONFIRM_SEPARATOR}s{seed}"


def unit_trial_id(key: str, unit: str) -> str:
    """The id of one training unit of candidate `key` (the candidate's own id when it has one unit)."""
    return f"{key}{UNIT_SEPARATOR}{unit}" if unit else key


def candidate_record(
    key: str, units: list, outcomes: dict[str, TrialRecord], base: dict[str, Any]
) -> dict[str, Any]:
    """The terminal record of a candidate trained once per protocol unit (data/protocol.py): complete when
    every unit completed, with the units' mean metrics and DomainBed's per-held-out-domain test accuracies
    (`combine_units`); failed or pruned, with the first such unit's reason, otherwise. The units' own
    numbers stay under ``extra.units``."""
    import time

    from normsearch.data.protocol import combine_units  # deferred: the data package imports torch

    order = [u.name for u in units]
    failed = [n for n in order if outcomes[n].status == "failed"]
    pruned = [n for n in order if outcomes[n].status == "pruned"]
    record: dict[str, Any] = {"trial_id": key, "time": time.time(), **base}
    if failed or pruned:
        name = (failed or pruned)[0]
        record.update(status="failed" if failed else "pruned", reason=f"unit {name}: {outcomes[name].reason}")
        record["epoch"] = outcomes[name].epoch
    else:
        metrics, test = combine_units(
            units, {n: outcomes[n].metrics for n in order}, {n: outcomes[n].test for n in order}
        )
        record.update(
            status="complete", final=True, metrics=metrics, test=test, epoch=outcomes[order[0]].epoch
        )
    record["extra"] = {
        "units": {
            n: {"status": outcomes[n].status, "metrics": outcomes[n].metrics, "test": outcomes[n].test}
            for n in order
        }
    }
    per_unit = [outcomes[n].extra.get(POLICIES) for n in order]
    if not failed and not pruned and all(per_unit):  # each policy combined over the units like the rest
        policies = [p for p in per_unit[0] if all(p in u for u in per_unit)]
        record["extra"][POLICIES] = {}
        for policy in policies:
            metrics, test = combine_units(
                units,
                {n: u[policy]["metrics"] for n, u in zip(order, per_unit, strict=True)},
                {n: u[policy]["test"] for n, u in zip(order, per_unit, strict=True)},
            )
            record["extra"][POLICIES][policy] = {"metrics": metrics, "test": test}
    return record


def metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    """The recorded part of a reported result: the metrics, per-domain accuracies and run information."""
    return {
        k: v for k, v in result.items() if k in RESULT_KEYS or k.startswith((SELECT_PREFIX, SOURCE_PREFIX))
    }


@dataclass
class TrialRecord:
    """A trial's latest state, folded from its records."""

    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    epoch: int | None = None
    node_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    nodes: set[str] = field(default_factory=set)
    reason: str | None = None
    repeat_of: str | None = None
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    confirm_of: str | None = None
    policy: str | None = None  # a (trial, policy) row (`policy_rows`): what its numbers were measured under

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def key(self) -> str:
        """Identity of the configuration, for collapsing duplicates and spotting repeats."""
        return config_key(self.arch if self.arch is not None else self.config)


def config_key(arch_or_config: dict[str, Any]) -> str:
    """A canonical text of the network an ArchConfig builds (or of sampled values): equal networks, equal
    keys. Two ArchConfigs that resolve to the same NormPlan on the same backbone are one configuration (a
    shared IBN ratio r and per-stage ratios [r, r] build the same network), so the no-duplicate rule and
    the front's grouping go by what is trained, not by how it was written."""
    text = json.dumps(arch_or_config, sort_keys=True)
    return _network_key(text) if "backbone" in arch_or_config else text


@functools.lru_cache(maxsize=4096)
def _network_key(text: str) -> str:
    from dataclasses import asdict

    from normsearch.arch import ArchConfig  # deferred: arch imports torch (norms)

    data = json.loads(text)
    try:
        # validate + one resolve: `ArchConfig.from_dict` resolves too, and a resolve is a third of this
        # key's cost, which `show` and `report` pay once per trial (1.1 -> 0.8 ms; `bench driver`)
        arch = validate(ArchConfig, data, "config")
        plan = arch.resolve()
    except (NormsearchError, ValueError):
        return text  # not a valid ArchConfig (an old or hand-edited record): its text is its identity
    return json.dumps(
        {
            "backbone": arch.backbone.model_dump(mode="json"),
            "plan": plan.rows(),
            "input_norm": plan.input_norm,
            "crossnorm": asdict(plan.crossnorm) if plan.crossnorm else None,
            "switchable": asdict(plan.switchable) if plan.switchable else None,
            # the test-time statistics policy makes another (network, policy) pair; absent when running
            **({"inference": plan.inference} if plan.inference != "running" else {}),
        },
        sort_keys=True,
    )


def own_policy(trial: TrialRecord) -> str:
    """The test-time statistics policy a trial's own numbers were measured under (its `norm.inference`)."""
    return trial.policy or str(((trial.arch or {}).get("norm") or {}).get("inference", "running"))


def policy_view(trial: TrialRecord, policy: str) -> TrialRecord | None:
    """`trial` as the row of one test-time statistics policy: that policy's metrics (over the trial's own
    non-accuracy ones: epochs, parameters, loss) and test accuracies, and an `arch` whose `norm.inference`
    is the policy (so `config_key` tells (network, policy) pairs apart and an export rebuilds with it).
    None when the trial was not measured under `policy`."""
    import dataclasses

    own = own_policy(trial)
    if policy == own:
        return dataclasses.replace(trial, policy=own)
    measured = (trial.extra.get(POLICIES) or {}).get(policy)
    if not isinstance(measured, dict):
        return None
    arch = None
    if trial.arch is not None:
        arch = {**trial.arch, "norm": {**(trial.arch.get("norm") or {}), "inference": policy}}
    return dataclasses.replace(
        trial,
        metrics={**trial.metrics, **(measured.get("metrics") or {})},
        test=dict(measured.get("test") or {}),
        arch=arch,
        policy=policy,
    )


def policy_rows(trial: TrialRecord) -> list[TrialRecord]:
    """One row per (trial, policy): the trial's own policy first, then every other policy it was evaluated
    under (``extra.policies``); a trial evaluated under one policy is one row."""
    rows = [policy_view(trial, own_policy(trial))]
    rows += [policy_view(trial, p) for p in trial.extra.get(POLICIES) or {} if p != own_policy(trial)]
    return [row for row in rows if row is not None]


def fold_records(records: list[dict[str, Any]]) -> list[TrialRecord]:
    """Every trial's state from its records, in the order trials first appeared."""
    trials: dict[str, TrialRecord] = {}
    for rec in records:
        tid = rec.get("trial_id")
        if tid is None or "status" not in rec:
            continue
        old = trials.get(tid)
        if old is not None and old.finished and rec["status"] not in FINISHED:
            continue  # a finished trial stays finished
        trials[tid] = TrialRecord(
            trial_id=tid,
            status=rec["status"],
            config=rec.get("config", old.config if old else {}),
            metrics=rec.get("metrics") or (old.metrics if old else {}),
            test=rec.get("test") or (old.test if old else {}),
            arch=rec.get("arch", old.arch if old else None),
            epoch=rec.get("epoch") if rec.get("epoch") is not None else (old.epoch if old else None),
            node_id=rec.get("node_id") or (old.node_id if old else None),
            versions=rec.get("versions") or (old.versions if old else {}),
            seed=rec.get("seed", old.seed if old else None),
            nodes=(old.nodes if old else set()) | ({rec["node_id"]} if rec.get("node_id") else set()),
            reason=rec.get("reason") if rec["status"] != "running" else None,
            repeat_of=rec.get("repeat_of", old.repeat_of if old else None),
            resumed_from=rec.get("resumed_from", old.resumed_from if old else None),
            extra={**(old.extra if old else {}), **rec.get("extra", {})},
            confirm_of=rec.get("confirm_of", old.confirm_of if old else None),
        )
    return list(trials.values())
