"""The decoded-image cache under concurrent writers: every process gets the same arrays, none fails."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normsearch.data.cache import cache_dir, cached


def _tree(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    rng = np.random.default_rng(1)
    for c in range(classes):
        folder = root / "art" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _prepare(root: str, cache: str, queue) -> None:
    import os

    os.environ["NORMSEARCH_CACHE"] = cache
    from normsearch.data.folder import load_folder

    try:
        data, report = load_folder(root, ["art"], size=8)
        art = data["art"]
        digest = hashlib.sha256(art.images.numpy().tobytes() + art.labels.numpy().tobytes()).hexdigest()
        queue.put((digest, report.cached["art"]))
    except Exception as error:  # reported to the test, which fails on it
        queue.put(("error", repr(error)))


@pytest.mark.slow  # over 3 s on a 2-core machine (--durations)
def test_concurrent_processes_preparing_one_domain_all_succeed_with_identical_data(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_prepare, args=(str(root), str(cache), queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(r[0] != "error" for r in results), results
    assert len({r[0] for r in results}) == 1  # identical arrays in every process
    assert sum(not from_cache for _, from_cache in results) == 1  # decoded by exactly one of them
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not list(cache.glob(".*.tmp"))  # one entry, no temporary left


def test_entries_are_memory_mapped_and_a_failed_decode_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    entry = cached("d", "k1", lambda: (images, np.array([0, 1]), []))
    assert entry.decoded_now and isinstance(entry.images, np.memmap)
    again = cached("d", "k1", lambda: pytest.fail("decoded twice"))
    assert not again.decoded_now and np.array_equal(again.images, images)

    def broken():
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        cached("d", "k2", broken)
    assert not (cache_dir() / "d-k2").exists() and not list(cache_dir().glob(".d-k2.*"))
