"""SIGTERM stops a wait at once, from any point of it - the flag a handler sets takes no lock."""

import os
import signal
import threading
import time

from whodid.stopping import Stop


def test_sigterm_ends_the_wait_and_a_timeout_ends_it_too():
    stop = Stop().install()
    try:
        assert stop.wait(0.2) is False and not stop.is_set()
        for delay in (0.0, 0.01, 0.05, 0.13):          # land the signal at different points of the wait
            stop.requested = False
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
            t = time.monotonic()
            assert stop.wait(10) is True
            assert time.monotonic() - t < 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
