"""Child processes of the local stack that cannot outlive it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


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
