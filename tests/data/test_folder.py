from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normsearch.data.folder import load_folder
from normsearch.errors import NormsearchError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))


def _tree(root: Path, domains: dict[str, dict[str, int]], size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for domain, classes in domains.items():
        for cls, count in classes.items():
            (root / domain / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / domain / cls / f"{i}.png")
    return root


def test_loads_resizes_and_caches(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"art": {"cat": 3, "dog": 2}, "photo": {"cat": 1, "dog": 4}})
    ds, report = load_folder(root, size=16)
    assert ds.classes == ["cat", "dog"] and set(ds.domains) == {"art", "photo"}
    art = ds["art"]
    assert art.images.shape == (5, 3, 16, 16) and art.images.dtype == torch.uint8
    assert art.labels.tolist() == [0, 0, 0, 1, 1]
    assert report.cached == {"art": False, "photo": False}
    again, report2 = load_folder(root, size=16)
    assert report2.cached == {"art": True, "photo": True}
    assert torch.equal(again["photo"].images, ds["photo"].images)
    # A changed file invalidates that domain's cache only.
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(root / "art" / "cat" / "0.png")
    _, report3 = load_folder(root, size=16)
    assert report3.cached == {"art": False, "photo": True}


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(NormsearchError, match="no such folder"):
        load_folder(tmp_path / "missing")
    root = _tree(tmp_path / "d", {"art": {"cat": 1, "dog": 1}, "photo": {"cat": 1, "cow": 1}})
    with pytest.raises(NormsearchError, match="no domain 'sketch'; domains found: art, photo"):
        load_folder(root, domains=["sketch"])
    with pytest.raises(
        NormsearchError,
        match=r"domains 'art' and 'photo' have different classes: \['cat', 'dog'\] vs \['cat', 'cow'\]",
    ):
        load_folder(root)
    (root / "art" / "empty").mkdir()
    with pytest.raises(NormsearchError, match="class 'empty' of domain 'art' has no images"):
        load_folder(root, domains=["art"])


def test_unreadable_image_named_or_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"art": {"cat": 2, "dog": 2}})
    (root / "art" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(NormsearchError, match=r"broken\.png: unreadable image"):
        load_folder(root)
    ds, report = load_folder(root, skip_unreadable=True)
    assert len(ds["art"]) == 4 and report.skipped["art"] == ["art/dog/broken.png"]


# --- issue 20: special files and pixel bombs ------------------------------------------------------------
def test_a_fifo_is_skipped_unopened_and_named_with_skip_unreadable(tmp_path: Path) -> None:
    """A FIFO named x.png would block the loader forever if opened; with skip_unreadable it is skipped (and
    reported), without it refused: both from `stat` alone, so this test returns at once."""
    root = _tree(tmp_path / "d", {"a": {"c0": 2, "c1": 2}})
    import os

    os.mkfifo(root / "a" / "c0" / "x.png")
    data, report = load_folder(root, size=8, skip_unreadable=True)
    assert len(data["a"]) == 4 and report.skipped["a"] == ["a/c0/x.png"]
    with pytest.raises(NormsearchError, match=r"x\.png: unreadable image \(is a FIFO"):
        load_folder(root, size=8, use_cache=False)


def test_max_pixels_is_inclusive_and_read_from_the_header(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": {"c0": 2, "c1": 2}}, size=8)  # 8 × 12 = 96 pixels each
    data, _ = load_folder(root, size=8, max_pixels=96, use_cache=False)
    assert len(data["a"]) == 4
    with pytest.raises(NormsearchError, match=r"above data.max_pixels 95|more than data.max_pixels 95"):
        load_folder(root, size=8, max_pixels=95, use_cache=False)
    # A 30000 × 30000 header over a few bytes of data: refused by its header, Pillow's bomb error never seen.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    (root / "a" / "c1" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    with pytest.raises(
        NormsearchError, match=r"big\.png: unreadable image \(holds more than data.max_pixels"
    ):
        load_folder(root, size=8, use_cache=False)
    _, report = load_folder(root, size=8, skip_unreadable=True, use_cache=False)
    assert report.skipped["a"] == ["a/c1/big.png"]
