"""Looking at domains: split sizes and class counts per domain, and a PNG grid with one row per domain."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid

from normsearch.data.domains import DomainSet
from normsearch.data.spec import DataConfig
from normsearch.errors import NormsearchError


def is_recipe_file(spec: str) -> bool:
    """Whether `spec` names a recipe file (whose `data` section the caller loads: data/ sits below recipe)."""
    path = Path(spec)
    return path.suffix in (".yaml", ".yml", ".json") and path.is_file()


def view_config(spec: str) -> DataConfig:
    """The data a person asked to look at, other than a recipe (see `is_recipe_file`): the built-in
    benchmark with its default targets ("synthetic"), or an image-folder root (its first domain as the
    source)."""
    path = Path(spec)
    if spec == "synthetic":
        return DataConfig()
    if path.is_dir():
        domains = sorted(p.name for p in path.iterdir() if p.is_dir())
        if len(domains) < 2:
            raise NormsearchError(f"{spec}: an image-folder root needs at least two domain folders")
        return DataConfig(dataset="folder", root=str(path), source=domains[0], select=domains[1:], test=[])
    raise NormsearchError(f"{spec}: not a recipe file, an image-folder root, or 'synthetic'")


def role(name: str, config: DataConfig) -> str:
    """source / select / test (both, under oracle selection)."""
    if name in config.sources:
        return "source (held out in turn)" if config.rotate else "source"
    roles = [r for r, names in (("select", config.select), ("test", config.test)) if name in names]
    return "+".join(roles) or "stored"


def domain_rows(data: DomainSet, config: DataConfig) -> list[tuple[str, ...]]:
    """(domain, role, train, val, test, per-class min-max) for every domain."""
    rows = []
    for name, domain in data.domains.items():
        sizes = [str(len(domain.splits[s])) if s in domain.splits else "-" for s in ("train", "val", "test")]
        counts = torch.bincount(domain.labels, minlength=data.num_classes)
        rows.append((name, role(name, config), *sizes, f"{int(counts.min())}-{int(counts.max())}"))
    return rows


def spread_over_classes(labels: torch.Tensor, count: int) -> list[int]:
    """The indices of `count` images taken in turn from each class (the first of every class, then the
    second, ...), so a grid row shows several classes even when the data is stored class by class.
    Depends on the labels alone, so domains paired image by image (synthetic) stay paired in columns."""
    queues = [torch.nonzero(labels == c).flatten().tolist() for c in sorted(set(labels.tolist()))]
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: count - len(picked)]
        depth += 1
    return picked


def save_grid(data: DomainSet, config: DataConfig, path: Path, per_row: int = 12) -> None:
    """A PNG with one row per domain, the domain's name at the left of its row: `per_row` evaluation
    images taken in turn from each class (paired across synthetic domains, so each column shows one glyph
    in every style)."""
    from PIL import Image, ImageDraw

    rows = []
    for domain in data.domains.values():
        split = "val" if "val" in domain.splits else "train"
        images, labels = domain.split(split) if domain.splits else (domain.images, domain.labels)
        take = images[spread_over_classes(labels, per_row)]
        if len(take) < per_row:
            pad = torch.zeros((per_row - len(take), *take.shape[1:]), dtype=take.dtype)
            take = torch.cat([take, pad])
        rows.append(take)
    grid = make_grid(torch.cat(rows).float() / 255, nrow=per_row, padding=2, pad_value=1.0)
    picture = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    names = list(data.domains)
    draw = ImageDraw.Draw(picture)
    margin = int(max(draw.textlength(n) for n in names)) + 8
    labelled = Image.new("RGB", (picture.width + margin, picture.height), "white")
    labelled.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    side = rows[0].shape[-2] + 2  # one image and its padding
    for i, name in enumerate(names):
        draw.text((4, 2 + i * side + side // 2), name, fill="black", anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled.save(path, format="PNG")
