"""The one writer: every batch, from every agent, is written by this thread.

SQLite takes one writer at a time; rather than have request threads queue on its lock (and
time out under load), they hand batches to this thread and wait for the answer. Batches that
queue up while one is written go in together in the next transaction (group commit).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from whodid.tracer.store import Store

GROUP = 64               # batches written in one transaction at most


@dataclass
class Written:
    accepted: int
    new: int


class WriterBusy(Exception):
    pass


class Writer:
    def __init__(self, store_path: str, queue_size: int = 256):
        self.store = Store.open(store_path, create=True)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name="whodid-writer", daemon=True)
        self.error: str | None = None           # the last failure, for /healthz
        self.written = 0

    def start(self) -> "Writer":
        self.thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, host: str, events: list[dict[str, Any]], at: float, clock, refused) -> Future:
        """Queue a batch; the future resolves to Written once it is committed."""
        return self._put(("batch", (host, events, at, clock, refused)))

    def call(self, fn: Callable[[Store], Any]) -> Future:
        """Run fn(store) on the writer thread (pruning, maintenance) between batches."""
        return self._put(("call", fn))

    def _put(self, job) -> Future:
        fut: Future = Future()
        try:
            self.queue.put_nowait((job, fut))
        except queue.Full:
            raise WriterBusy("the collector's write queue is full") from None
        return fut

    def stop(self, timeout: float = 60) -> None:
        """Write everything already queued, then stop."""
        if self.thread.is_alive():
            self.queue.put((None, None))
            self.thread.join(timeout)
        self.store.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self.queue.get()]
            while len(jobs) < GROUP:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if any(job is None for job, _ in jobs):
                stopping = True
                jobs = [j for j in jobs if j[0] is not None]
            batches = [(j, f) for j, f in jobs if j[0] == "batch"]
            for (_, fn), fut in ((j, f) for j, f in jobs if j[0] == "call"):
                try:
                    fut.set_result(fn(self.store))
                except Exception as exc:        # reported to whoever asked
                    fut.set_exception(exc)
            if batches:
                self._write(batches)

    def _write(self, batches) -> None:
        results = []
        try:
            with self.store.transaction():
                for (_, (host, events, at, clock, refused)), _fut in batches:
                    new = self.store.write(events) if events else 0
                    self.store.note_seen(host, at, clock)
                    self.store.add_rejects(host, at, refused)
                    results.append(Written(accepted=len(events), new=new))
        except Exception as exc:                  # disk full, I/O error: the agents keep their spools
            self.error = f"{type(exc).__name__}: {exc}"
            print(f"whodid serve: could not write {len(batches)} batches: {self.error}; agents will retry",
                  file=sys.stderr, flush=True)
            for _, fut in batches:
                fut.set_exception(exc)
            time.sleep(0.5)
            return
        self.error = None
        for (_, fut), res in zip(batches, results):
            self.written += res.accepted
            fut.set_result(res)
