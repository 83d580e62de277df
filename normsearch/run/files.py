"""Writing files so that a reader never sees half of one, and an OS error is one line naming the path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from normsearch.errors import NormsearchError


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def weights_only_reason(error: BaseException) -> str | None:
    """The line of a refused `torch.load(..., weights_only=True)` that says what the file holds ("...
    unsupported GLOBAL posix.system ..."), or None: not the message's first line, which advises loading the
    file with weights_only=False (running whatever it holds)."""
    lines = (line.strip() for line in str(error).splitlines())
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None)


@contextmanager
def os_errors(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError inside the block into ``<path>: cannot <what> (<reason>)``."""
    try:
        yield
    except OSError as error:
        raise NormsearchError(f"{path}: cannot {what} ({first_line(error)})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a uniquely named temporary file in the same folder and a rename;
    any OS error (an unwritable or missing place, a folder in the way) is one NormsearchError line."""
    path = Path(path)
    with os_errors(path, "write here"):
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file 0600; a run folder is read by colleagues and cluster jobs, so the file
            # gets what an ordinary open() would give it (0666 less the umask).
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode())
