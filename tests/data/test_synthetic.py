from __future__ import annotations

import pytest
import torch

from normsearch.data import STYLES, Domain, DomainSet, make_synthetic
from normsearch.errors import NormsearchError

SMALL = {"n_train": 120, "n_val": 30, "n_test": 40}


def test_same_seed_same_tensors_other_seed_differs() -> None:
    a, b, c = (
        make_synthetic(**SMALL, seed=1),
        make_synthetic(**SMALL, seed=1),
        make_synthetic(**SMALL, seed=2),
    )
    for name in STYLES:
        assert torch.equal(a[name].images, b[name].images) and torch.equal(a[name].labels, b[name].labels)
        assert not torch.equal(a[name].images, c[name].images)


def test_shapes_dtypes_and_disjoint_splits() -> None:
    ds = make_synthetic(**SMALL, size=24)
    assert ds.num_classes == 10
    src = ds["plain"]
    assert src.images.dtype == torch.uint8 and src.images.shape == (190, 3, 24, 24)
    parts = [set(src.splits[s].tolist()) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [120, 30, 40]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set(ds["fog"].splits) == {"val", "test"}


def test_targets_are_paired_with_the_source_eval_images() -> None:
    ds = make_synthetic(**SMALL)
    _, source_labels = ds["plain"].split("test")
    for name in STYLES:
        assert torch.equal(ds[name].split("test")[1], source_labels)
    # Same geometry and colours: without style bias, inverted is exactly the complement of plain.
    unbiased = make_synthetic(**SMALL, style_bias=0.0)
    plain = unbiased["plain"].split("test")[0].float()
    inverted = unbiased["inverted"].split("test")[0].float()
    assert torch.equal(ds["plain"].split("val")[1], ds["inverted"].split("val")[1])
    assert (plain + inverted - 255).abs().max() <= 1


def test_style_bias_makes_colour_predict_the_class_on_the_source_only() -> None:
    ds = make_synthetic(n_train=600, n_val=10, n_test=300, style_bias=1.0)

    def hue_accuracy(domain: str, split: str) -> float:
        images, labels = ds[domain].split(split)
        x = images.float() / 255
        fg = x.flatten(2).max(-1).values  # glyph colour: the brightest value per channel
        import colorsys

        hues = torch.tensor([colorsys.rgb_to_hsv(*c.tolist())[0] for c in fg])
        predicted = torch.round(hues * 10) % 10
        return float((predicted == labels).float().mean())

    assert hue_accuracy("plain", "train") > 0.9
    assert hue_accuracy("sketch", "test") < 0.3


def test_bad_arguments() -> None:
    with pytest.raises(NormsearchError, match="unknown domain 'cartoon'"):
        make_synthetic(domains=["cartoon"], **SMALL)
    with pytest.raises(NormsearchError, match=r"style_bias must be in \[0, 1\]"):
        make_synthetic(style_bias=2.0, **SMALL)


def test_domain_set_checks_classes_and_names() -> None:
    d = Domain("a", torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(
        NormsearchError, match=r"domains 'a' and 'b' have different classes: \['x', 'y'\] vs \['x', 'z'\]"
    ):
        DomainSet(["x", "y"], {"a": d, "b": d}, class_sets={"a": ["x", "y"], "b": ["x", "z"]})
    ds = DomainSet(["x", "y"], {"a": d})
    with pytest.raises(NormsearchError, match="no domain 'c'; domains found: a"):
        ds["c"]
    d.split_by_fractions({"train": 0.5, "test": 0.5}, seed=0)
    assert sorted(torch.cat(list(d.splits.values())).tolist()) == [0, 1]
