"""The one writer: every batch, from every agent, is written by this thread.

SQLite takes one writer at a time; rather than have request threads queue on its lock (and
time out under load), they hand batches to this thread and wait for the answer. Batches that
queue up while one is written go in together in the next transaction (group commit).

Rules of a group: a batch that fails must not take the others with it. Events are validated
before they get here (events.py), but if writing a group still fails, each batch is written
again on its own; a batch that fails because of what it holds (an event the store cannot take)
is split in halves until the events at fault are found, refused with the reason, and the rest
is stored. Only a store that cannot be written at all (a full disk, an I/O error) fails a
batch whole - nothing of it is stored, the agent keeps it and sends it again - and only that
shows on /healthz.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from whodid import logs
from whodid.tracer.ingest import event_fault, write_isolating
from whodid.tracer.store import Store

GROUP = 64               # batches written in one transaction at most
# A group of batches taking longer than this to write is a wedged writer, said on /healthz
# (a hung disk, a lock another process holds): agents see nothing but timeouts meanwhile.
STALLED_AFTER = 90.0

log = logs.get("collector")


@dataclass
class Written:
    accepted: int
    new: int
    refused: list[tuple[int, str, str]] = field(default_factory=list)   # (index in events, field, error)


class WriterBusy(Exception):
    pass


class Writer:
    def __init__(self, store_path: str, queue_size: int = 256):
        self.store = Store.open(store_path, create=True)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._run, name="whodid-writer", daemon=True)
        self.error: str | None = None           # the last failure, for /healthz
        self.written = 0
        self.busy_since: float | None = None    # time.monotonic() when the current round began
        self.stalled_after = STALLED_AFTER

    def start(self) -> "Writer":
        self.thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stalled(self) -> float | None:
        """Seconds the current round has taken, when that is longer than stalled_after."""
        since = self.busy_since
        took = time.monotonic() - since if since is not None else 0.0
        return took if took > self.stalled_after else None

    def submit(self, host: str, events: list[dict[str, Any]], at: float, clock, refused,
               lines: list[int] | None = None) -> Future:
        """Queue a batch; the future resolves to Written once it is committed. lines: each
        event's line in the request, for refusals found while writing."""
        return self._put(("batch", (host, events, at, clock, refused, lines)))

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
                # only writing batches is timed: a long maintenance call (a prune of a big
                # store) is expected, and a probe that restarted the collector for it would
                # see the prune never finish
                self.busy_since = time.monotonic()
                self._write(batches)
                self.busy_since = None

    def _write(self, batches) -> None:
        jobs = [job for (_, job), _ in batches]
        try:
            results: list[Written | Exception] = self._write_group(jobs)
        except Exception as exc:
            if event_fault(exc):
                # an event the store cannot take, which validation let through: the batches one
                # by one, so other hosts' batches are stored and the one at fault loses only it
                results = [self._try(self._write_alone, job) for job in jobs]
            else:                               # the store's fault: nothing of the group is stored
                results = [exc] * len(jobs)
        failed = [res for res in results if isinstance(res, Exception)]
        if failed:                              # disk full, I/O error: the agents keep their spools
            self.error = f"{type(failed[0]).__name__}: {failed[0]}"
            log.error(f"could not write {len(failed)} batches: {self.error}; agents will retry")
        else:
            self.error = None
        for (_, fut), res in zip(batches, results):
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                self.written += res.accepted
                fut.set_result(res)
        if failed:
            time.sleep(0.5)

    @staticmethod
    def _try(fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            return exc

    def _write_group(self, jobs) -> list[Written]:
        results = []
        with self.store.transaction():
            for host, events, at, clock, refused, _lines in jobs:
                new = self.store.write(events) if events else 0
                self.store.note_seen(host, at, clock)
                self.store.add_rejects(host, at, refused)
                results.append(Written(accepted=len(events), new=new))
        return results

    def _write_alone(self, job) -> Written:
        """One batch on its own; events the store cannot take are found and refused (see
        write_isolating), the rest is stored."""
        host, events, at, clock, refused, lines = job
        new, faults = write_isolating(self.store, events)
        if faults:
            log.error(f"refused {len(faults)} events from {host} that the store could not hold; "
                      f"first: {faults[0][1]}", host=host)
        rejects = [*refused, *((lines[i] if lines else None, "event", why, json.dumps(events[i], default=repr)[:2000])
                               for i, why in faults)]
        with self.store.transaction():
            self.store.note_seen(host, at, clock)
            self.store.add_rejects(host, at, rejects)
        return Written(accepted=len(events) - len(faults), new=new, refused=[(i, "event", why) for i, why in faults])
