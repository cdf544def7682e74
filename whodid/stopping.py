"""Stopping on SIGTERM/SIGINT without the classic deadlock.

A handler that calls threading.Event.set() takes the Event's lock; if the signal lands while
the main thread is inside Event.wait() holding that same lock, the process hangs for good
(seen once in ~20 CI runs of `whodid serve`). The handler here only sets an attribute, and
waiting is sleeping in short steps.
"""

from __future__ import annotations

import signal
import time


class Stop:
    def __init__(self):
        self.requested = False

    def install(self) -> "Stop":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, *_) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until asked to stop (True) or timeout seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.requested:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True
