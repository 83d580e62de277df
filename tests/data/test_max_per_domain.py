"""`data.max_per_domain` (issue 23): a seeded cap per domain, stratified per class, before the split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from normsearch.data.folder import _files, capped_files, load_folder
from normsearch.data.spec import DataConfig, load_data
from normsearch.data.subset import cap_domain, shares, stratified_take

CLASSES = {"c0": 7, "c1": 2, "c2": 5}  # odd counts: 14 images, capped at 6


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))


def colour(domain: int, cls: int, i: int) -> tuple[int, int, int]:
    """A colour of its own for every file, so a decoded image says which file it came from."""
    return (30 * i + 5, 80 * cls + 10, 100 * domain + 20)


def write_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<domain>/<class>/<i>.png: real 10×12 PNGs, one solid colour per file."""
    for d, (domain, classes) in enumerate(layout.items()):
        for k, (cls, count) in enumerate(classes.items()):
            (root / domain / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (12, 10), colour(d, k, i)).save(root / domain / cls / f"{i:02d}.png")
    return root


def file_of(image: torch.Tensor) -> tuple[int, int, int]:
    """The (domain, class, index) whose colour a decoded solid image holds."""
    r, g, b = (int(image[c, 0, 0]) for c in range(3))
    return ((b - 20) // 100, (g - 10) // 80, (r - 5) // 30)


def test_shares_by_largest_remainder_worked_by_hand() -> None:
    # 7/2/5 of 14, keep 6: quotas 3, 0.857, 2.143 -> floors 3, 0, 2 -> class 1 raised to its floor of one.
    assert shares([7, 2, 5], 6) == [3, 1, 2]
    # Quotas 1.667 each: floors 1, 1, 1; the two free seats tie on .667 and go to the lower indices.
    assert shares([4, 4, 4], 5) == [2, 2, 1]
    # The floor of one overshoots (2 + 1 + 1 > 3): the class most above its quota 2.94 gives one back.
    assert shares([100, 1, 1], 3) == [1, 1, 1]
    # Fewer seats than classes: no floor of one; quotas 1, .286, .714 -> the one free seat to .714.
    assert shares([7, 2, 5], 2) == [1, 0, 1]
    assert shares([7, 2, 5], 14) == [7, 2, 5] and shares([7, 2, 5], 99) == [7, 2, 5]
    assert shares([0, 3, 3], 2) == [0, 1, 1]  # an empty class keeps nothing, the others one each


def test_folder_cap_stratified_and_seeded_on_real_pngs(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"art": CLASSES, "photo": {"c0": 3, "c1": 3, "c2": 3}})
    full, _ = load_folder(root, ["art"], size=8)
    assert len(full["art"]) == 14

    def kept(seed: int) -> list[tuple[int, int, int]]:
        data, _ = load_folder(root, ["art"], size=8, max_per_domain=6, seed=seed)
        domain = data["art"]
        assert len(domain) == 6 and data.classes == ["c0", "c1", "c2"]
        assert torch.bincount(domain.labels, minlength=3).tolist() == [3, 1, 2]
        files = [file_of(image) for image in domain.images]
        assert [f[1] for f in files] == domain.labels.tolist()  # each image carries its own label
        assert len(set(files)) == 6 and all(i < CLASSES[f"c{k}"] for _, k, i in files)
        return files

    # Same seed, same files (the second load comes from the cache; the first decoded only the six).
    assert kept(0) == kept(0)
    assert kept(0) != kept(1)
    # The file lists agree with what was decoded, and are the ones the positions name.
    chosen = capped_files(_files(root / "art"), 6, 0)
    assert [len(paths) for paths in chosen.values()] == [3, 1, 2]
    named = sorted((0, int(p.parent.name[1]), int(p.stem)) for paths in chosen.values() for p in paths)
    assert named == sorted(kept(0))
    # A cap at or above the domain keeps every file.
    assert capped_files(_files(root / "art"), 14, 3) == _files(root / "art")


def test_stratified_take_is_seeded_per_class() -> None:
    labels = [0] * 7 + [1] * 2 + [2] * 5
    a, b = stratified_take(labels, 6, 0), stratified_take(labels, 6, 0)
    assert a.tolist() == b.tolist() and a.tolist() == sorted(a.tolist())
    draws = {tuple(stratified_take(labels, 6, seed).tolist()) for seed in range(8)}
    assert len(draws) > 4  # the seed chooses which images
    # Within a class, a smaller share keeps a subset of a larger one's images.
    assert set(stratified_take(labels, 6, 3).tolist()) <= set(stratified_take(labels, 10, 3).tolist())


def test_folder_recipe_capped_before_its_split(tmp_path: Path) -> None:
    layout = {d: {"a": 10, "b": 10, "c": 10} for d in ("photo", "art")}
    root = write_folder(tmp_path / "data", layout)
    config = DataConfig(
        dataset="folder",
        root=str(root),
        source="photo",
        select=["art"],
        size=8,
        val_fraction=0.2,
        test_fraction=0.2,
        max_per_domain=15,
    )
    data = load_data(config)
    for name in ("photo", "art"):
        domain = data[name]
        assert len(domain) == 15 and torch.bincount(domain.labels).tolist() == [5, 5, 5]
        # 5 per class split 0.6/0.2/0.2 per class: 3/1/1, so 9/3/3: the fractions apply to the kept images.
        sizes = {s: len(i) for s, i in domain.splits.items()}
        assert sizes == {"train": 9, "val": 3, "test": 3}
    # The resolved data section reproduces the same images (what a resume and an export read).
    again = load_data(DataConfig.model_validate(config.model_dump(mode="json")))
    assert torch.equal(again["photo"].images, data["photo"].images)
    assert torch.equal(again["photo"].splits["train"], data["photo"].splits["train"])
    other = load_data(config.model_copy(update={"seed": 1}))
    assert not torch.equal(other["photo"].images, data["photo"].images)


def test_too_small_a_cap_names_the_key(tmp_path: Path) -> None:
    from normsearch.errors import NormsearchError

    root = write_folder(tmp_path / "data", {"photo": CLASSES, "art": CLASSES})
    config = DataConfig(dataset="folder", root=str(root), source="photo", select=["art"], max_per_domain=6)
    with pytest.raises(NormsearchError, match=r"has 6 images \(data.max_per_domain 6 kept\).*raise data"):
        load_data(config)


def test_synthetic_cap_shares_the_generated_splits() -> None:
    base = {"n_train": 100, "n_val": 20, "n_test": 20, "source": "plain", "select": ["texture", "pastel"]}
    full = load_data(DataConfig(**base, test=["plain+contrast@4"]))
    capped = load_data(DataConfig(**base, test=["plain+contrast@4"], max_per_domain=28))
    # 28 of 100/20/20: quotas 20, 4, 4. A target (20/20): 14, 14. The derived target: the source's 4 + 4.
    sizes = {n: {s: len(i) for s, i in d.splits.items()} for n, d in capped.domains.items()}
    assert sizes["plain"] == {"train": 20, "val": 4, "test": 4}
    assert sizes["texture"] == sizes["pastel"] == {"val": 14, "test": 14}
    assert sizes["plain+contrast@4"] == {"val": 4, "test": 4}
    for name, domain in capped.domains.items():
        if name == "plain+contrast@4":
            continue
        for split, index in domain.splits.items():
            whole = full[name].labels[full[name].splits[split]]
            expected = shares(torch.bincount(whole, minlength=10).tolist(), len(index))
            assert torch.bincount(domain.labels[index], minlength=10).tolist() == expected, (name, split)
    # Targets given equal shares keep the same evaluation images: still paired glyph for glyph.
    assert torch.equal(capped["texture"].labels, capped["pastel"].labels)
    # The kept images are the generated ones (a subset, not new draws).
    source = capped["plain"]
    rows = {tuple(x.flatten().tolist()) for x in full["plain"].images}
    assert all(tuple(x.flatten().tolist()) in rows for x in source.images)
    # A cap above every domain changes nothing.
    big = load_data(DataConfig(**base, test=["plain+contrast@4"], max_per_domain=10_000))
    assert all(torch.equal(big[n].images, full[n].images) for n in full.domains)


def test_cap_domain_without_splits_matches_the_file_choice() -> None:
    """evaluate re-caps a loaded folder domain to find training's test split: the tensor-level cap must
    keep the positions the file-level cap kept."""
    from normsearch.data.domains import Domain

    labels = torch.tensor([0] * 7 + [1] * 2 + [2] * 5)
    images = torch.arange(14, dtype=torch.uint8).view(14, 1, 1, 1).expand(14, 3, 2, 2).contiguous()
    capped = cap_domain(Domain("d", images, labels), 6, 4)
    assert capped.images[:, 0, 0, 0].tolist() == stratified_take(labels, 6, 4).tolist()
