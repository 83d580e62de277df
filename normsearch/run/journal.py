"""trials.jsonl on disk: every append one whole line, and what a crash at any byte leaves, read and repaired.

An append is one `write` of a whole line through an ``O_APPEND`` descriptor, then `fsync`; a crash can
still cut the line short (the kernel wrote part of it, the machine died). So a reader finds one of:

- whole lines only: nothing to do;
- whole lines, then a last line without its newline that is a whole JSON object (only the newline was
  lost): the newline is added;
- whole lines, then a *torn* last line (a cut JSON object): the reader skips it, and `repair_tail` moves it
  to ``trials.jsonl.torn`` (appended there, never deleted) and cuts the file back to its last whole line,
  so that the next append starts a line of its own. What the torn record said is then recovered from the
  study (run/reconcile.py `recover_from_study`);
- a line that is not a JSON object anywhere *before* the last line: the records themselves are damaged
  (no crash of an append leaves that), which is refused in one line naming the line.

For the crash-consistency test, ``NORMSEARCH_CRASH_AFTER_BYTES=N`` makes this process write only the first
N bytes of everything it appends (counted over all its appends), fsync them and end at once
(`os._exit`), as a machine that dies mid-write would; ``NORMSEARCH_CRASH_AFTER_STUDY_WRITES=K`` ends it
right after its K-th write to the study (`study_written`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.run.files import first_line, os_errors

TORN_SUFFIX = ".torn"
CRASH_BYTES_ENV = "NORMSEARCH_CRASH_AFTER_BYTES"
CRASH_STUDY_ENV = "NORMSEARCH_CRASH_AFTER_STUDY_WRITES"
CRASH_EXIT = 86  # the exit code of an injected crash (no Python cleanup runs, like a SIGKILL)
_written = {"bytes": 0, "study": 0}


@dataclass
class Scan:
    """What is in a records file: its whole records, and the torn last line (if any)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    whole: int = 0  # bytes up to and including the last newline
    torn: bytes = b""  # a cut last line
    unterminated: bool = False  # the last record is whole but its newline was lost


def _env_limit(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else None


def _crash() -> None:
    os._exit(CRASH_EXIT)


def _write_all(fd: int, data: bytes) -> None:
    limit = _env_limit(CRASH_BYTES_ENV)
    if limit is not None and _written["bytes"] + len(data) > limit:
        part = data[: max(limit - _written["bytes"], 0)]
        while part:
            part = part[os.write(fd, part) :]
        os.fsync(fd)
        _crash()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    _written["bytes"] += len(data)


def study_written() -> None:
    """Called after every write to the study; ends the process at the injected point (see above)."""
    _written["study"] += 1
    limit = _env_limit(CRASH_STUDY_ENV)
    if limit is not None and _written["study"] >= limit:
        _crash()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def scan(path: Path) -> Scan:
    """Read a records file (see the module docstring); a damaged line before the last is one
    NormsearchError naming the line. The last line is torn when it is not a JSON object, with or without
    its newline (a crash of the machine can also leave the file's last block zero-filled)."""
    with os_errors(path, "read the records"):
        data = path.read_bytes()
    found = Scan()
    lines, start = [], 0
    for number, piece in enumerate(data.split(b"\n"), start=1):
        end = start + len(piece) + (start + len(piece) < len(data))  # the line with its newline
        lines.append((number, start, data[start:end]))
        start = end
    while lines and not lines[-1][2].strip(b"\n\r\t \x00"):
        lines.pop()  # blank (or zero-filled) lines at the end carry nothing
    for number, start, line in lines:
        if not line.strip():
            continue
        record = _parse(line)
        if record is not None:
            found.records.append(record)
            found.unterminated = not line.endswith(b"\n")
            found.whole = start + len(line)
            continue
        if number == lines[-1][0]:
            found.whole = start
            break
        raise NormsearchError(
            f"{path}: line {number} is not a whole JSON record ({_why(line)}), and it is not the last "
            "line, so no crash of an append explains it; the records are damaged and nothing is read "
            "from them (restore the file, or move the run aside)"
        )
    found.torn = data[found.whole :] if data[found.whole :].strip(b"\n\r\t \x00") else b""
    return found


def _why(line: bytes) -> str:
    try:
        json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return first_line(error)
    return "not a JSON object"


def repair_tail(path: Path) -> str | None:
    """Make the file end in a whole line: a torn last line is appended to ``<name>.torn`` and cut off; a
    lost newline is added. Returns what was done (None when nothing was)."""
    if not path.is_file():
        return None
    found = scan(path)
    with os_errors(path, "repair the records"):
        if found.unterminated:
            _append_bytes(path, b"\n")
            return f"{path.name}: the last record had lost its newline; added"
        if found.whole == path.stat().st_size:
            return None
        aside = path.with_name(path.name + TORN_SUFFIX)
        # Aside first, then the cut: a crash between the two leaves the torn line in both places, and the
        # next repair puts it aside once more; it is never lost.
        if found.torn:
            _append_bytes(aside, found.torn.rstrip(b"\n") + b"\n")
        with open(path, "r+b") as handle:
            handle.truncate(found.whole)
            handle.flush()
            os.fsync(handle.fileno())
    if not found.torn:
        return f"{path.name}: blank bytes after its last record (a crashed machine) were cut"
    return (
        f"{path.name}: its last line was torn by a crash ({len(found.torn)} bytes); moved to {aside.name}, "
        "and what it said is recovered from the study"
    )


def _append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_whole(path: Path) -> bool:
    """Whether the file is empty, missing, or ends with a newline (read: its last byte only)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one whole line (one write through O_APPEND, then fsync). A file left ending in a
    torn line (a crashed writer) is repaired first, so the new line never joins a cut one."""
    line = (json.dumps(record, sort_keys=False) + "\n").encode()
    with os_errors(path, "append a record"):
        if not _ends_whole(path):
            repair_tail(path)
        _append_bytes(path, line)
