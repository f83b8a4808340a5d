"""A stop request that a signal handler may set.

`threading.Event.set()` takes a lock. A signal handler runs in the main thread
between two bytecodes, so a second signal (Ctrl-C pressed twice, or SIGTERM
arriving while the first handler is still inside `set()`) re-enters it and
waits forever for the lock its own thread holds: the Pi agent was seen hung
that way after its parent was killed. Setting a bool takes no lock.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator


class StopFlag:
    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float, *, poll_s: float = 0.1) -> bool:
        """Sleep until set or `timeout` passed; True if set. Polls: a sleep is woken by nothing else."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll_s, left))
        return True


@contextlib.contextmanager
def stopped_by_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call `on_signal` while the body runs; after it they are ignored.

    Python's finalization puts SIG_DFL back where it had installed a handler, so the rest
    of a burst of signals would kill a process that already stopped cleanly (exit -15,
    not 0). An ignored signal is left ignored.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: on_signal())
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
