"""trials.jsonl at the byte level: whole-line appends, what a crash at each byte leaves, and its repair."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from normsearch.errors import NormsearchError
from normsearch.run import journal

RECORDS = [{"trial_id": f"t00{i}", "status": "running", "epoch": i, "note": "é"} for i in range(3)]


def _write(path: Path, records=RECORDS) -> bytes:
    for record in records:
        journal.append_record(path, record)
    return path.read_bytes()


def test_appends_are_whole_lines_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    data = _write(path)
    assert data.count(b"\n") == 3 and data.endswith(b"\n")
    assert journal.scan(path).records == RECORDS


def test_a_cut_at_every_byte_reads_the_whole_lines_and_repairs_to_them(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.jsonl")
    ends = [i + 1 for i, b in enumerate(full) if b == ord("\n")]
    for cut in range(len(full) + 1):
        path = tmp_path / f"cut{cut}.jsonl"
        path.write_bytes(full[:cut])
        whole = sum(end <= cut for end in ends)
        only_newline_lost = cut + 1 in ends
        found = journal.scan(path)
        assert len(found.records) == whole + only_newline_lost, cut
        message = journal.repair_tail(path)
        aside = path.with_name(path.name + journal.TORN_SUFFIX)
        if only_newline_lost:
            assert path.read_bytes() == full[: cut + 1] and not aside.exists()
        elif cut in ends or cut == 0:
            assert message is None and path.read_bytes() == full[:cut] and not aside.exists()
        else:
            last = max([0, *[e for e in ends if e <= cut]])
            assert path.read_bytes() == full[:last]
            assert aside.read_bytes() == full[last:cut] + b"\n" and "moved to" in message
        journal.append_record(path, {"trial_id": "next"})  # the next append starts a line of its own
        assert journal.scan(path).records[-1] == {"trial_id": "next"}


def test_an_append_onto_a_torn_line_moves_it_aside_first(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    full = _write(path)
    path.write_bytes(full[:-10])
    journal.append_record(path, {"trial_id": "t009", "status": "complete"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["trial_id"] for line in lines] == ["t000", "t001", "t009"]
    assert (tmp_path / "trials.jsonl.torn").is_file()


def test_a_damaged_line_before_the_last_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    lines = _write(path).split(b"\n")
    path.write_bytes(b"\n".join([lines[0], lines[1][:20] + lines[2], lines[0], b""]))
    with pytest.raises(NormsearchError, match=r"trials.jsonl: line 2 is not a whole JSON record") as caught:
        journal.scan(path)
    assert "\n" not in str(caught.value)
    path.write_bytes(b'["a list"]\n' + lines[0] + b"\n")
    with pytest.raises(NormsearchError, match="line 1"):
        journal.scan(path)


def test_a_last_line_that_is_not_json_is_torn_even_with_its_newline_and_zero_fill_is_cut(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trials.jsonl"
    full = _write(path)
    path.write_bytes(full[:-15] + b"\n")  # a cut line that still got its newline (a recovered test file)
    assert len(journal.scan(path).records) == 2 and journal.scan(path).torn
    journal.repair_tail(path)
    assert path.read_bytes() == full[: full[:-1].rfind(b"\n") + 1]
    path.write_bytes(full + b"\x00" * 4096)  # a crashed machine's zero-filled last block
    assert len(journal.scan(path).records) == 3 and not journal.scan(path).torn
    assert "blank bytes" in journal.repair_tail(path) and path.read_bytes() == full


@pytest.mark.parametrize("limit", [0, 1, 57, 80])
def test_the_injected_crash_writes_exactly_n_bytes_and_ends_the_process(tmp_path: Path, limit: int) -> None:
    path = tmp_path / "trials.jsonl"
    full = _write(tmp_path / "reference.jsonl")
    pid = os.fork()
    if pid == 0:
        os.environ[journal.CRASH_BYTES_ENV] = str(limit)
        journal._written.update(bytes=0, study=0)
        try:
            _write(path)
        finally:
            os._exit(0)  # reached only if the crash did not happen
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == journal.CRASH_EXIT
    assert path.read_bytes() == full[:limit]
