"""The local stack's logs are appended to across runs and moved aside when large."""

from __future__ import annotations

from pathlib import Path

from iotbridge_local.processes import rotate_large_logs


def test_a_large_log_is_moved_aside_and_a_small_one_kept(tmp_path: Path) -> None:
    # GIVEN a log past the limit, an older rotated copy of it, a small log, and one not written yet
    big, small, absent = tmp_path / "api.log", tmp_path / "rules.log", tmp_path / "jobs.log"
    big.write_bytes(b"x" * 2000)
    (tmp_path / "api.log.1").write_bytes(b"older")
    small.write_bytes(b"y" * 10)

    # WHEN the stack starts and rotates them
    moved = rotate_large_logs([big, small, absent], limit=1000)

    # THEN only the large one moved, replacing the older copy; the small one is untouched
    assert moved == [big]
    assert not big.exists() and (tmp_path / "api.log.1").read_bytes() == b"x" * 2000
    assert small.read_bytes() == b"y" * 10 and not absent.exists()
