"""The decoded-image cache: each folder domain decoded once per image size, memory-mapped by every reader.

An entry is a folder ``<cache>/<domain>-<key>/`` holding ``images.npy`` (uint8, N×C×H×W), ``labels.npy``
and ``meta.json``; the key hashes the domain's file list, sizes, modification times and the image size, so
an edited folder gets a new entry. Readers map ``images.npy`` copy-on-write (``mmap_mode="c"``): trials on
one node share the decoded pixels through the page cache instead of each holding a copy.

Writers never race: the first process to need an entry takes an exclusive lock (``fcntl.flock`` on
``<entry>.lock``), decodes into a temporary folder with a unique name, and renames it into place; the
others wait on the lock and then read the finished entry. A folder shared between nodes (NFS) works the
same way wherever `flock` reaches the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normsearch.errors import NormsearchError

IMAGES = "images.npy"
LABELS = "labels.npy"
META = "meta.json"


def cache_dir() -> Path:
    """``$NORMSEARCH_CACHE``, else ``~/.cache/normsearch``."""
    return Path(os.environ.get("NORMSEARCH_CACHE", Path.home() / ".cache" / "normsearch"))


@dataclass(frozen=True)
class Entry:
    """A cached domain: memory-mapped images, labels, and what decoding skipped."""

    images: np.ndarray
    labels: np.ndarray
    skipped: list[str]
    decoded_now: bool


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read(folder: Path, decoded_now: bool) -> Entry:
    meta = json.loads((folder / META).read_text())
    images = np.load(folder / IMAGES, mmap_mode="c")
    labels = np.load(folder / LABELS)
    return Entry(images, labels, list(meta.get("skipped", [])), decoded_now)


def cached(
    name: str,
    key: str,
    decode: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]],
    root: Path | None = None,
) -> Entry:
    """The entry `name-key`, decoding it with `decode()` (images, labels, skipped) if no process has yet."""
    base = root or cache_dir()
    folder = base / f"{name}-{key}"
    if (folder / META).is_file():
        return _read(folder, decoded_now=False)
    try:
        with _locked(base / f"{name}-{key}.lock"):
            if (folder / META).is_file():  # another process finished it while we waited
                return _read(folder, decoded_now=False)
            images, labels, skipped = decode()
            tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{name}-{key}.", suffix=".tmp"))
            try:
                np.save(tmp / IMAGES, np.ascontiguousarray(images, dtype=np.uint8))
                np.save(tmp / LABELS, np.asarray(labels, dtype=np.int64))
                (tmp / META).write_text(json.dumps({"count": len(labels), "skipped": skipped}))
                os.replace(tmp, folder)  # atomic: readers see the whole entry or none
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as error:
        raise NormsearchError(
            f"image cache {base}: cannot write ({str(error).splitlines()[0]}); set NORMSEARCH_CACHE to a "
            "writable folder"
        ) from None
    return _read(folder, decoded_now=True)
