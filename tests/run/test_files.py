"""Atomic writes: the new file or the old one, never a partial one; ordinary permissions; one-line errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from normsearch.errors import NormsearchError
from normsearch.run.files import atomic_write_text


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_an_atomic_write_gets_the_permissions_an_ordinary_write_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_writing_onto_a_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NormsearchError, match="cannot write here"):
        atomic_write_text(tmp_path, "x")
