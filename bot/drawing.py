"""Trace pictures drawn in a process of their own, so answering does not slow ingest.

`whodid serve` runs the collector's writer and the Slack bot in one process. Drawing a
picture is ~150 ms of matplotlib holding the interpreter lock (text glyphs, PNG encoding);
ten people asking at once made the writer wait its turn behind every drawing thread, and
ingest fell to a quarter of its rate (bench/incident.py). Here pictures are drawn by one
worker process: the bot's thread only waits for the bytes (without the lock), the writer keeps
its interpreter, and the operating system shares the cores.

Rules:
- The worker is started, and warmed (matplotlib imported, its fonts loaded, one picture
  drawn), when the bot starts, not when the first question comes: a cold answer pays nothing
  for it.
- One worker: pictures are drawn one at a time (matplotlib's Agg was already drawn under one
  lock), and one core stays the collector's. It runs at a lower priority (NICE) than the bot:
  when the cores are short, the record is written first and the picture waits.
- A worker that dies (killed, out of memory) is replaced, and the picture asked for is drawn
  again; if drawing in a worker fails twice, it is drawn here, as before.
- Where no process can be started (a sandbox without semaphores or fork), pictures are drawn
  here, and the log says so once.
- What the worker is sent is the trace (plain data, a few KB pickled) and the time; what it
  returns is the PNG's bytes. It opens nothing: no store, no network.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from whodid import logs

log = logs.get("bot")

# How much lower the drawing process runs than the bot's (nice). Under ten askers, a worker at
# the bot's own priority took its full share of the cores from the collector's writer: ingest
# kept 0.70-0.77 of its idle rate (bench/incident.py, three runs); at +5 it kept 0.80-0.90 (three
# runs), the pictures' p95 2.1-2.4 s instead of 1.7-2.1 - a picture a few tenths of a second
# later is cheaper than a record that falls behind. +10 gave no more (0.78, 0.87) and slower
# pictures (p95 2.5-2.6 s).
NICE = 5
DRAW_TIMEOUT = 60.0           # a picture that takes longer is drawn here instead (a wedged worker)
_HERE = threading.Lock()      # matplotlib's Agg is not safe for concurrent drawing in one process


def draw_here(tr, now: float) -> bytes:
    """The picture, drawn in this process (one at a time)."""
    from whodid.tracer.render.image import render_png
    with _HERE:
        return render_png(tr, now)


def _draw(tr, now: float) -> bytes:
    from whodid.tracer.render.image import render_png
    return render_png(tr, now)


def _warm() -> int:
    """In the worker: import matplotlib and draw text in both faces the pictures use, so the
    first real picture is not the one that loads the fonts. Returns the worker's pid."""
    import io
    import os

    import whodid.tracer.render.image  # noqa: F401 (the drawing code itself)
    import matplotlib
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1, 1), dpi=50)
    fig.text(0.1, 0.5, "whodid", fontsize=9)
    fig.text(0.1, 0.2, "whodid", fontsize=9, family="monospace", weight="bold")
    fig.savefig(io.BytesIO(), format="png")
    return os.getpid()


def _lower_priority() -> None:
    """In the worker, before anything else: yield the cores to the bot's process (NICE)."""
    import os
    try:
        os.nice(NICE)
    except OSError:         # a sandbox that forbids it: drawn at the bot's priority, as before
        pass


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker no longer answers: its processes killed and reaped (no zombie)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError):      # gone already, or closed
            pass
    for p in procs:
        try:
            p.join(5)
        except (OSError, ValueError, AssertionError):
            pass
    pool.shutdown(wait=False)          # its pictures fail as BrokenProcessPool: asked again


class Painter:
    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.warmed = None               # the warm-up's Future: its result is the worker's pid
        self.cannot: str | None = None   # why no drawing process can be started: draw here

    def start(self) -> "Painter":
        """Start the worker and warm it, without waiting for either."""
        with self._lock:
            if self._pool is None and not self._closed:
                self._pool = self._new_pool()
        return self

    def _new_pool(self) -> ProcessPoolExecutor | None:
        if self.cannot:
            return None
        try:
            # spawn, not fork: the bot's process has threads (the writer, HTTP servers) and
            # forking one copies whatever locks they hold at that moment
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_lower_priority)
            self.warmed = pool.submit(_warm)
        except (OSError, ImportError, RuntimeError) as exc:
            self.cannot = str(exc) or type(exc).__name__
            log.warning(f"cannot start a process to draw trace pictures ({self.cannot}); drawing them in this "
                        "process, where they slow ingest while people ask")
            return None
        return pool

    def draw(self, tr, now: float) -> bytes:
        """The trace's picture as PNG bytes. Raises what drawing raised (a drawing bug)."""
        for attempt in (1, 2):
            with self._lock:
                if self._closed:
                    break
                if self._pool is None:
                    self._pool = self._new_pool()
                pool = self._pool
            if pool is None:
                break
            try:
                return pool.submit(_draw, tr, now).result(DRAW_TIMEOUT)
            except (BrokenProcessPool, CancelledError):
                # (cancelled: a pool shut down under it - asked again, or drawn here once closed)
                log.warning(f"the picture-drawing process died; starting another (attempt {attempt})")
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                # not cancel_futures: a broken pool fails every waiting picture itself, and one
                # cancelled meanwhile makes its manager thread die (InvalidStateError) unjoined
                pool.shutdown(wait=False)
            except TimeoutError:
                # wedged (stuck, stopped): left, every later picture would queue behind it and
                # wait out the timeout too. Killed and replaced; whoever else waits on it gets
                # BrokenProcessPool and asks the next one
                log.warning(f"the picture-drawing process took over {DRAW_TIMEOUT:g} s; drawing here instead, "
                            "and starting another")
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                _kill(pool)
                break
            except RuntimeError as exc:         # shut down meanwhile (the bot is stopping)
                if "shutdown" not in str(exc):
                    raise
                break
        return draw_here(tr, now)

    def pid(self) -> int | None:
        """The worker's process id, once it has started (for tests)."""
        pool = self._pool
        procs = list((getattr(pool, "_processes", None) or {}).keys()) if pool else []
        return procs[0] if procs else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
