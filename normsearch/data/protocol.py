"""DomainBed's protocol: which domains train, which choose the model, which are reported — per training run.

A recipe's `data` section expands into one or more *units*; a candidate is trained once per unit and its
objectives are the units' means. The selection rules carry DomainBed's names (Gulrajani & Lopez-Paz,
"In Search of Lost Domain Generalization", §3):

- ``held_out``: the explicit `select` domains choose (their val split); `test` domains are reported.
- ``training_domain`` (training-domain validation): the sources' own val splits choose; the objectives are
  the mean and the worst source's val accuracy, so no target is ever seen before reporting.
- ``leave_one_domain_out``: each source in turn is held out of training and chooses (its val split); a
  candidate is trained once per source and the held-out accuracies are averaged.
- ``oracle`` (test-domain validation): the test domain chooses. Optimistic by construction; every header
  says ORACLE.

With ``rotate: true`` the domains listed in `source` take turns as the held-out test domain, the others
being that fold's sources (DomainBed's table: one column per held-out domain and their average); under
``leave_one_domain_out`` the select domain rotates among each fold's sources as well, and under ``oracle``
the fold's held-out domain is what selects.
"""

from __future__ import annotations

from dataclasses import dataclass

SELECTION_RULES = ("held_out", "training_domain", "leave_one_domain_out", "oracle")


@dataclass(frozen=True)
class Unit:
    """One training run of a candidate: its name ("" for a single run), the domains it trains on, the
    domains whose val split is its target objective, the domains it reports on, and the rotated-out
    test domain (None without rotation)."""

    name: str
    sources: tuple[str, ...]
    select: tuple[str, ...]
    test: tuple[str, ...]
    held_out: str | None = None

    @property
    def targets(self) -> list[str]:
        """Select then test domains, each once, in order."""
        return list(dict.fromkeys([*self.select, *self.test]))


def expand_units(
    sources: list[str], select: list[str], test: list[str], selection: str, rotate: bool
) -> list[Unit]:
    """The training runs one candidate needs under `selection` (see the module docstring)."""
    folds: list[tuple[str | None, list[str], list[str]]]
    if rotate:
        folds = [(d, [s for s in sources if s != d], [d, *[t for t in test if t != d]]) for d in sources]
    else:
        folds = [(None, list(sources), list(test))]
    units = []
    for held_out, fold_sources, fold_test in folds:
        prefix = held_out or ""
        if selection == "leave_one_domain_out":
            for chooser in fold_sources:
                rest = tuple(s for s in fold_sources if s != chooser)
                name = f"{prefix}~{chooser}" if prefix else chooser  # a folder name: no "/"
                units.append(Unit(name, rest, (chooser,), tuple(fold_test), held_out))
            continue
        chosen: tuple[str, ...]
        if selection == "training_domain":
            chosen = ()
        elif selection == "oracle" and held_out is not None:
            chosen = (held_out, *[s for s in select if s != held_out])
        else:
            chosen = tuple(select)
        units.append(Unit(prefix, tuple(fold_sources), chosen, tuple(fold_test), held_out))
    return units


def describe_rule(
    selection: str, sources: list[str], select: list[str], test: list[str], rotate: bool
) -> str:
    """One line naming the selection rule and the domains' roles, for every table header and record."""
    where = (
        f"each of {', '.join(sources)} held out in turn (the others train)"
        if rotate
        else f"source{'s' if len(sources) > 1 else ''} {', '.join(sources)}"
    )
    extra = f"; also reported: {', '.join(test)}" if rotate and test else ""
    if selection == "oracle":
        on = "the held-out test domain" if rotate else ", ".join(select)
        return (
            f"ORACLE selection (test-domain validation): {where}; selected on {on}, which is also reported; "
            f"accuracies are optimistic{extra}"
        )
    if selection == "training_domain":
        rule = "training-domain validation: selected on the sources' own val splits (mean and worst source)"
    elif selection == "leave_one_domain_out":
        rule = "leave-one-domain-out validation: each source in turn held out of training selects"
    else:
        rule = f"selected on held-out domains {', '.join(select)}"
    reported = "the held-out domain is" if rotate else f"test domains {', '.join(test) or 'none'}"
    return f"{where}; {rule}; {reported} reported after selection{extra}"


def combine_units(units: list[Unit], finals: dict[str, dict], tests: dict[str, dict]) -> tuple[dict, dict]:
    """A candidate's numbers from its units': every metric all units report, averaged (the objectives are
    fold means); the test accuracies averaged per domain, and under rotation each held-out domain's
    accuracy from the folds that held it out with their average under ``avg`` (DomainBed's table row)."""
    names = [u.name for u in units]
    common = set.intersection(*(set(finals[n]) for n in names))
    metrics = {
        k: sum(float(finals[n][k]) for n in names) / len(names)
        for k in common
        if all(isinstance(finals[n][k], int | float) and not isinstance(finals[n][k], bool) for n in names)
    }
    test: dict[str, float] = {}
    held = [u for u in units if u.held_out is not None]
    if held:
        for domain in dict.fromkeys(u.held_out for u in held):
            values = [tests[u.name][domain] for u in held if u.held_out == domain]
            test[domain] = sum(values) / len(values)
        test["avg"] = sum(test.values()) / len(test)
    shared = set.intersection(*(set(tests[n]) for n in names)) - set(test)
    for key in sorted(shared):
        test[key] = sum(tests[n][key] for n in names) / len(names)
    return metrics, test
