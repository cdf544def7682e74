"""Ingest: validate events and write them to the store in batches.

The one path by which events reach the store - the demo, `whodid ingest`, and (later) the
collector and the audit importer all come through here. A bad event is refused with the
reason and its position; the rest of its batch is kept - also when validation let through
an event the store then cannot take (write_isolating finds it). Command lines are redacted
(tracer/redact.py) on the way in, whatever their producer did.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .events import EventError, decode_line, parse_event
from .redact import DEFAULT_RULES, redact_event
from .store import Store

BATCH = 5000
MAX_SAMPLES = 20


@dataclass
class Rejected:
    position: int          # 1-based index in the input (line number for JSON lines)
    field: str
    message: str

    def __str__(self) -> str:
        return f"event {self.position}: {self.field}: {self.message}"


@dataclass
class IngestReport:
    received: int = 0
    accepted: int = 0
    new: int = 0           # accepted events the store had not seen before
    by_kind: Counter = field(default_factory=Counter)
    rejected: int = 0
    samples: list[Rejected] = field(default_factory=list)   # the first few refusals, for people

    def refuse(self, position: int, err: EventError) -> None:
        self.rejected += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(Rejected(position, err.field, err.message))

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind.items()))
        text = f"{self.accepted} of {self.received} events accepted, {self.new} new ({kinds or 'none'})"
        if self.rejected:
            text += f"; {self.rejected} refused, first: {self.samples[0]}"
        return text


def ingest(store: Store, events: Iterable[Any], *, batch: int = BATCH,
           progress: Callable[[IngestReport], None] | None = None, rules=DEFAULT_RULES) -> IngestReport:
    """Ingest events: dicts (decoded JSON) or str/bytes (JSON lines). Never raises on bad events.
    Command lines are redacted with `rules` (the defaults and this site's agent.redact_patterns);
    rules=None only for a producer that redacted them itself with rules that hold the defaults
    - the agent in local mode, whose assembler did (agent/cli.py Sink): a second pass changed
    nothing and cost it a few per cent of its CPU in an exec storm."""
    report = IngestReport()
    pending: list[tuple[int, dict[str, Any]]] = []
    for position, raw in enumerate(events, 1):
        report.received += 1
        try:
            if isinstance(raw, (str, bytes)):
                if not raw.strip():
                    report.received -= 1
                    continue
                ev = decode_line(raw)
            else:
                ev = parse_event(raw)
        except EventError as err:
            report.refuse(position, err)
            continue
        if rules is not None:
            redact_event(ev, rules)     # whoever produced the line, no secret reaches the store
        pending.append((position, ev))
        report.by_kind[ev["kind"]] += 1
        if len(pending) >= batch:
            _flush(store, pending, report, progress)
    _flush(store, pending, report, progress)
    return report


def _flush(store: Store, pending: list[tuple[int, dict[str, Any]]], report: IngestReport, progress) -> None:
    if not pending:
        return
    new, faults = write_isolating(store, [ev for _, ev in pending])
    report.new += new
    report.accepted += len(pending) - len(faults)
    for i, message in faults:
        report.by_kind[pending[i][1]["kind"]] -= 1
        report.refuse(pending[i][0], EventError("event", message))
    pending.clear()
    if progress:
        progress(report)


def write_isolating(store: Store, events: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str]]]:
    """Write validated events; should one still fail at insert time because of what it holds,
    halve until it is found, write the rest, and refuse it. Returns (new facts, [(index,
    why)]). A store that cannot be written (full disk, I/O error) raises as write() does; the
    parts written before are idempotent, so writing them all again is safe."""
    new, faults, parts = 0, [], [(0, len(events))]
    while parts:
        lo, hi = parts.pop()
        if hi <= lo:
            continue
        try:
            new += store.write(events[lo:hi])
        except Exception as exc:
            if not event_fault(exc):
                raise
            if hi - lo == 1:
                faults.append((lo, f"the store cannot hold it ({type(exc).__name__}: {exc})"))
                continue
            mid = (lo + hi) // 2
            parts += [(mid, hi), (lo, mid)]          # the first half first: parents before children
    return new, sorted(faults)


def event_fault(exc: Exception) -> bool:
    """Did writing fail because of what an event holds (a number, a string, a type the store
    cannot take), rather than because the store cannot be written (OperationalError: a full
    disk, an I/O error, a lock)?"""
    if isinstance(exc, (sqlite3.OperationalError, MemoryError)):
        return False
    return isinstance(exc, (ValueError, TypeError, KeyError, OverflowError, sqlite3.IntegrityError,
                            sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError))
