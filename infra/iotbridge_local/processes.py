"""Child processes of the local stack that cannot outlive it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

# Logs are appended to across runs (a crash's log survives the restart that follows);
# past this size one is moved aside to `<name>.1` when the stack starts, so a stack
# started every day for months keeps two files per log, not one that grows for good.
LOG_KEEP_BYTES = 32 * 1024 * 1024


def rotate_large_logs(paths: Iterable[Path], *, limit: int = LOG_KEEP_BYTES) -> list[Path]:
    """Move each log larger than `limit` to `<name>.1` (replacing an older one); returns those moved."""
    moved = []
    for path in paths:
        try:
            if path.stat().st_size <= limit:
                continue
            path.replace(path.with_name(path.name + ".1"))
        except FileNotFoundError:
            continue
        moved.append(path)
    return moved


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the stack's stop() is the only cleanup


def die_with_parent() -> Callable[[], None] | None:
    """A Popen `preexec_fn`: on Linux the child gets SIGTERM when the process that started it
    dies, even by SIGKILL, so a crashed test run or a killed `iotbridge up` leaves nothing behind.

    The kernel ties this to the thread that forks, so it is only given to children started
    from the main thread (a child started from a short-lived thread would die with that thread).
    """
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None
