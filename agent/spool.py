"""The agent's spool: a small SQLite file between capture and shipping.

Capture appends and never waits for the network; the shipper reads from the head and deletes
only what the collector acknowledged, so a crash or a collector outage loses nothing that
reached the spool (WAL with synchronous=FULL: a commit is on disk before capture goes on; at
one commit per flush interval the fsyncs cost little). The spool has a cap. When it is full, the policy says which events give way
(`drop-oldest`, the default, keeps the most recent activity; `drop-newest` keeps the oldest),
and every dropped event is counted: the count, and the time span it covered, go to the
collector as a `loss` event, so traces crossing that span say they may be incomplete.
What the collector refuses (an event, or a batch as a whole) moves to the `refused` table:
kept for people to look at, never resent, never in the way of what follows, and within a
quarter of the cap (the newest kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from whodid import logs, private

_compact = json.JSONEncoder(separators=(",", ":")).encode


def event_line(ev: dict[str, Any]) -> bytes:
    """An event as one line of compact JSON (no newline), as --out and the spool keep it.
    orjson because the agent encodes every event it makes, and the standard library's encoder
    was a quarter of its CPU in an exec storm (bench/agent_overhead.py). orjson refuses what the
    schema allows but it cannot write - arguments that were not UTF-8 reach us as lone
    surrogates (surrogateescape), integers past 64 bits - and those lines take the standard
    encoder, which writes surrogates as \\udcXX escapes."""
    try:
        return orjson.dumps(ev)
    except orjson.JSONEncodeError:
        return _compact(ev).encode()

POLICIES = ("drop-oldest", "drop-newest")
# What the collector refused is kept for people in at most this fraction of the spool's cap
# (on top of the cap), the newest kept.
REFUSED_SHARE = 4

log = logs.get("agent")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, line BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL,
                                    since REAL NOT NULL, until REAL NOT NULL, why TEXT NOT NULL);
-- batches the collector refused as a whole (not gzip, not JSON lines): kept here, not resent
CREATE TABLE IF NOT EXISTS refused (seq INTEGER PRIMARY KEY, at REAL NOT NULL, why TEXT, line BLOB NOT NULL);
"""


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 1 << 30, policy: str = "drop-oldest",
                 host: str = "", boot: str = ""):
        if policy not in POLICIES:
            raise SpoolError(f"unknown spool policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.path, self.max_bytes, self.policy = str(path), max_bytes, policy
        self.host, self.boot = host, boot
        try:
            self.db, self.bytes = self._open()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise self._cannot_open(exc) from None
            # A damaged spool would stop the agent at every start, capturing nothing: it is set
            # aside, whatever it still holds kept for people, and capture goes on in a new one.
            aside = self._set_aside_damaged()
            log.error(f"the spool {self.path} is damaged ({exc}); it is set aside as {aside} with the "
                      f"events it held (`sqlite3 {aside} .recover` may save some) and a new spool is started")
            try:
                self.db, self.bytes = self._open()
            except sqlite3.DatabaseError as exc2:
                raise self._cannot_open(exc2) from None
        except OSError as exc:
            raise self._cannot_open(exc) from None
        self.lock = threading.Lock()
        self.arrived = threading.Event()
        self._said_discarded = False
        self.dropped_total = 0

    def _open(self) -> tuple[sqlite3.Connection, int]:
        """(connection, bytes of events held). Reads every page once (quick_check), so damage is
        found here, where the spool can be set aside, not later in the middle of shipping."""
        # private before SQLite opens it: its -wal and -shm take the file's mode
        private.create_file(self.path)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(SCHEMA)
            problems = [r[0] for r in db.execute("PRAGMA quick_check(1)") if r[0] != "ok"]
            if problems:
                err = sqlite3.DatabaseError(f"database disk image is malformed: {problems[0]}")
                err.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
                raise err
            self.refused_bytes = db.execute("SELECT coalesce(sum(length(line)), 0) FROM refused").fetchone()[0]
            return db, db.execute("SELECT coalesce(sum(length(line)), 0) FROM events").fetchone()[0]
        except BaseException:
            db.close()
            raise

    def _cannot_open(self, exc: BaseException) -> SpoolError:
        why = private.trouble(exc if isinstance(exc, OSError) else None, self.path)
        return SpoolError(f"{why + ': ' if why else ''}cannot open the spool {self.path}: "
                          f"{getattr(exc, 'strerror', None) or exc}")

    def _set_aside_damaged(self) -> str:
        """Move the damaged spool (and its write-ahead log) to PATH.damaged-STAMP; its -shm is
        only an index of the log, remade by SQLite."""
        aside = f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.replace(self.path, aside)
        if os.path.exists(self.path + "-wal"):
            os.replace(self.path + "-wal", aside + "-wal")
        if os.path.exists(self.path + "-shm"):
            os.unlink(self.path + "-shm")
        return aside

    # --- capture side --------------------------------------------------------------------

    def put(self, events: list[dict[str, Any]]) -> int:
        """Append events; returns how many were kept. Never raises for a full spool or disk."""
        if not events:
            return 0
        rows, size = _rows(events)
        with self.lock:
            held = self.bytes               # _make_room counts what it deletes; a rollback undoes that
            try:
                with _tx(self.db):
                    if self.bytes + size > self.max_bytes:
                        rows, size = self._make_room(rows, size)
                    self.db.executemany("INSERT INTO events (ts, line) VALUES (?, ?)", rows)
                self.bytes += size
            except sqlite3.DatabaseError as exc:             # disk full, I/O error, damage found
                self.bytes = held
                self._count_drop(len(rows), rows[0][0], rows[-1][0], f"spool not writable: {exc}")
                return 0
        if rows:
            self.arrived.set()
        return len(rows)

    def _make_room(self, rows, size):
        if self.policy == "drop-newest":
            keep, dropped = [], []
            room = self.max_bytes - self.bytes
            for r in rows:
                if len(r[1]) <= room:
                    keep.append(r)
                    room -= len(r[1])
                else:
                    dropped.append(r)
            if dropped:
                self._count_drop(len(dropped), min(r[0] for r in dropped), max(r[0] for r in dropped),
                                 "agent spool full (drop-newest)")
            return keep, sum(len(r[1]) for r in keep)
        need = self.bytes + size - self.max_bytes
        freed, count, lo, hi, last = 0, 0, None, None, None
        for seq, ts, length in self.db.execute("SELECT seq, ts, length(line) FROM events ORDER BY seq"):
            if freed >= need:
                break
            freed += length
            count += 1
            lo = ts if lo is None else min(lo, ts)
            hi = ts if hi is None else max(hi, ts)
            last = seq
        if last is not None:
            self.db.execute("DELETE FROM events WHERE seq <= ?", [last])
            self.bytes -= freed
            self._count_drop(count, lo, hi, "agent spool full (drop-oldest)")
        if freed < need:          # a single batch larger than the whole spool: keep its newest part
            keep, room = [], self.max_bytes - self.bytes
            for r in reversed(rows):
                if len(r[1]) > room:
                    break
                keep.append(r)
                room -= len(r[1])
            keep.reverse()
            cut = rows[:len(rows) - len(keep)]
            if cut:
                self._count_drop(len(cut), cut[0][0], cut[-1][0], "agent spool full (drop-oldest)")
            rows = keep
        return rows, sum(len(r[1]) for r in rows)

    def _count_drop(self, count: int, since: float, until: float, why: str) -> None:
        """Remember drops (persisted: a restart does not forget them) until they can be reported."""
        self.dropped_total += count
        try:
            self.db.execute(
                "INSERT INTO dropped (id, count, since, until, why) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO "
                "UPDATE SET count = count + excluded.count, since = min(since, excluded.since), "
                "until = max(until, excluded.until)", [count, since, until, why])
        except sqlite3.DatabaseError:
            pass                  # the disk is full: the in-memory total still reaches the log
        log.error(f"dropped {count} events: {why}")

    def report_drops(self) -> None:
        """Turn counted drops into a `loss` event at the tail of the spool, once there is room."""
        if not self.host:
            return                  # forwarding others' events: no host of our own to report for
        with self.lock:
            try:
                row = self.db.execute("SELECT count, since, until, why FROM dropped").fetchone()
            except sqlite3.DatabaseError:
                return              # damaged: the shipper says so (peek); the drops were logged
            if not row:
                return
            count, since, until, why = row
            loss = {"v": 1, "kind": "loss", "host": self.host, "boot": self.boot, "ts": round(max(until, since), 6),
                    "since": round(since, 6), "count": count, "what": why}
            line = event_line(loss)
            if self.bytes + len(line) > self.max_bytes:
                return
            try:
                with _tx(self.db):
                    self.db.execute("INSERT INTO events (ts, line) VALUES (?, ?)", [loss["ts"], line])
                    self.db.execute("DELETE FROM dropped")
                self.bytes += len(line)
            except sqlite3.DatabaseError:
                return
        self.arrived.set()

    # --- shipping side -------------------------------------------------------------------

    def head(self, max_events: int, max_bytes: int) -> tuple[int, list[bytes]]:
        """The oldest events not yet acknowledged: (last seq, lines)."""
        rows = self.peek(max_events, max_bytes)
        return (rows[-1][0] if rows else 0), [line for _, line in rows]

    def peek(self, max_events: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The oldest events not yet acknowledged, as (seq, line), within the budget (one at least)."""
        rows, size = [], 0
        with self.lock, self._failing("read the events to ship from"):
            for seq, line in self.db.execute("SELECT seq, line FROM events ORDER BY seq LIMIT ?", [max_events]):
                if rows and size + len(line) > max_bytes:
                    break
                rows.append((seq, line))
                size += len(line) + 1
        return rows

    def ack(self, upto: int) -> None:
        with self.lock, self._failing("record what the collector acknowledged in"):
            with _tx(self.db):
                freed = self._remove(upto)
            self.bytes -= freed             # only once the deletion is committed

    def set_aside(self, upto: int, why: str) -> int:
        """Move events up to seq out of the shipping queue into `refused`, keeping them (a batch
        the collector refused as a whole): set_aside_some, with every one of them named."""
        with self.lock, self._failing("set refused events aside in"):
            seqs = [seq for (seq,) in self.db.execute("SELECT seq FROM events WHERE seq <= ?", [upto])]
        return self.set_aside_some(upto, dict.fromkeys(seqs, why))

    def set_aside_some(self, upto: int, refused: dict[int, str]) -> int:
        """Acknowledge the events up to seq, but keep those named in `refused` (seq -> why) in
        the `refused` table, in one transaction. Returns how many were set aside."""
        with self.lock, self._failing("record what the collector acknowledged in"):
            with _tx(self.db):
                n = 0
                if refused:
                    n = self.db.executemany(
                        "INSERT OR REPLACE INTO refused (seq, at, why, line) SELECT seq, ?, ?, line FROM events "
                        "WHERE seq = ? AND seq <= ?",
                        [(time.time(), why, seq, upto) for seq, why in refused.items()]).rowcount
                added = self.db.execute("SELECT coalesce(sum(length(line)), 0) FROM refused WHERE seq >= ? "
                                        "AND seq <= ?", [min(refused, default=upto + 1), upto]).fetchone()[0]
                freed = self._remove(upto)
                refused_bytes = self._trim_refused(self.refused_bytes + added)
            self.bytes -= freed             # only once the deletion is committed
            self.refused_bytes = refused_bytes
        return n

    def _trim_refused(self, total: int) -> int:
        """Keep the `refused` table within its share of the cap (REFUSED_SHARE): past it the
        oldest events set aside go, said once. Without a bound, an agent whose every event is
        refused (a host renamed after its token was made) filled its disk with them, and then
        the spool took nothing. Inside the caller's transaction; returns the table's bytes."""
        limit = self.max_bytes // REFUSED_SHARE
        if total <= limit:
            return total
        freed, last = 0, None
        for seq, length in self.db.execute("SELECT seq, length(line) FROM refused ORDER BY seq"):
            if total - freed <= limit:
                break
            freed, last = freed + length, seq
        if last is not None:
            self.db.execute("DELETE FROM refused WHERE seq <= ?", [last])
            if not self._said_discarded:
                self._said_discarded = True
                log.error(f"the spool's `refused` table of {self.path} reached its share of the cap "
                          f"({limit} bytes): the oldest events set aside give way to the newest (said once; "
                          "check why the collector refuses them)")
        return total - freed

    def refused_count(self) -> int:
        """Events set aside so far (they stay until someone looks at them and clears the table)."""
        with self.lock:
            return self.db.execute("SELECT count(*) FROM refused").fetchone()[0]

    def _remove(self, upto: int) -> int:
        """Delete the events up to seq, inside the caller's transaction; returns their bytes."""
        freed = self.db.execute("SELECT coalesce(sum(length(line)), 0) FROM events WHERE seq <= ?",
                                [upto]).fetchone()[0]
        self.db.execute("DELETE FROM events WHERE seq <= ?", [upto])
        return freed

    @contextlib.contextmanager
    def _failing(self, what: str):
        """SQLite's errors on the shipping side as a SpoolError for a person: the shipper says
        it and tries again later, rather than its thread dying while capture fills a spool no
        one ships. Nothing is lost: what was not acknowledged stays and is sent again (a resend
        stores nothing twice)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            why = private.trouble(None, self.path) or ("damaged" if _damaged(exc) else None)
            raise SpoolError(f"{why + ': ' if why else ''}cannot {what} the spool {self.path} ({exc}); "
                             "its events stay in it and are sent again once it can be written") from None

    def pending(self) -> int:
        with self.lock, self._failing("count the events in"):
            return self.db.execute("SELECT count(*) FROM events").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _damaged(exc: BaseException) -> bool:
    """Is this SQLite's word for a file that is not (or no longer) a sound database?"""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _rows(events: list[dict[str, Any]]) -> tuple[list[tuple[float, bytes]], int]:
    """The spool's rows for events - (_when(ev), event_line(ev)) - and their bytes, in one pass:
    this runs for every event the agent makes in fleet mode, and three passes with a call per
    event for each were a fifth of the spool's share of the agent's CPU in an exec storm
    (bench/agent_profile.py). The common case inline; anything else through the two functions."""
    rows, size, dumps, now = [], 0, orjson.dumps, None
    for ev in events:
        try:
            line = dumps(ev)
        except orjson.JSONEncodeError:
            line = _compact(ev).encode()
        ts = ev.get("ts")
        if type(ts) is not float or not 0 <= ts < 1e12:       # NaN fails the comparison
            if type(ts) is int and 0 <= ts < 1e12:
                ts = float(ts)
            else:
                ts = now = now or time.time()
        rows.append((ts, line))
        size += len(line)
    return rows, size


def _when(ev: dict[str, Any]) -> float:
    """The spool's own time for an event (only for counting what is dropped): the event's
    time when that is a usable number, else now. An event with ts NaN or 10**30 is still
    spooled and shipped - the collector refuses it with a reason - rather than failing the
    insert of every event captured with it."""
    ts = ev.get("ts")
    if type(ts) in (int, float) and 0 <= ts < 1e12:           # NaN fails the comparison
        return float(ts)
    return time.time()


class _tx:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        if not exc_type:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:        # SQLite may have rolled back already (disk full)
            self.db.execute("ROLLBACK")
        return False
