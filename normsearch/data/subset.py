"""`data.max_per_domain`: a seeded, class-stratified cap on the images of every domain (a budget knob).

Which images a domain keeps is a function of its labels (in stored order), the cap and the data seed only,
so the subset is reproduced exactly from the resolved recipe (`recipe.yaml` of a run folder, the
`provenance.data` of an export) and the same folder contents.

- **Shares.** Class k of a domain with c_k of T images keeps q_k = N·c_k/T images, rounded by the largest
  remainder (Hamilton's method): every class first gets ⌊q_k⌋, at least 1 when N is at least the number of
  classes present (a small class is never dropped from a capped domain), and the seats still free go to
  the largest remainders q_k − n_k; when the floor of 1 overshoots N, the classes most above their quota
  give one back. Ties go to the lower class index, so the rounding is deterministic.
- **Which images.** Within class k, a permutation of its images drawn from a generator seeded by
  (data seed, k) alone; the first n_k are kept (within a class, a smaller share keeps a subset of a
  larger one's images).
- **Before the split.** A folder domain is capped before it is split into train/val/test (the fractions
  then apply to the kept images, so every split shrinks in proportion and stays stratified; capping the
  train split alone would leave val and test at full size, which is not a budget). The built-in
  benchmark generates its splits directly, with nothing to split afterwards: its cap is shared among the
  generated splits in proportion to their sizes (the same largest-remainder rule), each split then capped
  per class as above. The eval splits of every synthetic domain share their labels, so domains given
  equal shares (every target of the benchmark) keep the same, still paired, evaluation images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from normsearch.data.domains import Domain

# A constant first word of every cap stream, so that the cap never draws the numbers a split draws.
_STREAM = 0x6361


def shares(counts: Sequence[int], total: int) -> list[int]:
    """How many of `counts[k]` items each group keeps when `total` are kept over all (see the module
    docstring: largest remainder, at least 1 per non-empty group when `total` allows it, ties to the
    lower index). `total` at or above the sum keeps everything."""
    counts = [int(c) for c in counts]
    pool = sum(counts)
    if total >= pool:
        return counts
    quota = [total * c / pool for c in counts]
    keep = [int(q) for q in quota]
    present = sum(1 for c in counts if c > 0)
    if total >= present:
        keep = [max(k, 1) if c > 0 else 0 for k, c in zip(keep, counts, strict=True)]
    while sum(keep) > total:  # the floor of one overshot: the group most above its quota gives one back
        over = [(keep[k] - quota[k], -k) for k in range(len(counts)) if keep[k] > 1]
        keep[-max(over)[1]] -= 1
    while sum(keep) < total:  # the free seats to the largest remainders
        room = [(quota[k] - keep[k], -k) for k in range(len(counts)) if keep[k] < counts[k]]
        keep[-max(room)[1]] += 1
    return keep


def stratified_take(labels: Sequence[int] | np.ndarray | torch.Tensor, total: int, seed: int) -> np.ndarray:
    """The sorted positions of the `total` items of `labels` a cap keeps: per class the `shares`, chosen
    by a permutation seeded by (`seed`, class). All positions when `total` covers them."""
    labels = np.asarray(labels, dtype=np.int64)
    if total >= len(labels):
        return np.arange(len(labels))
    classes = int(labels.max()) + 1 if len(labels) else 0
    where = [np.flatnonzero(labels == k) for k in range(classes)]
    kept = []
    for k, n in enumerate(shares([len(w) for w in where], total)):
        order = np.random.default_rng([_STREAM, seed, k]).permutation(len(where[k]))
        kept.append(where[k][order[:n]])
    return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def cap_domain(domain: Domain, total: int, seed: int) -> Domain:
    """`domain` with at most `total` images. A domain with splits (the built-in benchmark's, generated as
    such) shares the cap among them in proportion to their sizes and caps each per class; one without
    splits is capped per class as a whole (a folder domain, before it is split)."""
    if total >= len(domain):
        return domain
    if not domain.splits:
        keep = torch.from_numpy(stratified_take(domain.labels, total, seed))
        return Domain(domain.name, domain.images[keep], domain.labels[keep])
    names = list(domain.splits)
    parts, splits, start = [], {}, 0
    for name, n in zip(names, shares([len(domain.splits[s]) for s in names], total), strict=True):
        index = domain.splits[name]
        chosen = index[torch.from_numpy(stratified_take(domain.labels[index], n, seed))]
        parts.append(chosen)
        splits[name] = torch.arange(start, start + len(chosen))
        start += len(chosen)
    keep = torch.cat(parts)
    return Domain(domain.name, domain.images[keep], domain.labels[keep], splits)
