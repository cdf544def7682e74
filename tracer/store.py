"""The causal store: one SQLite file of facts reported by hosts.

Two halves, kept narrow: `write()` takes validated events (see events.py) and stores them
idempotently - the same event twice is stored once, because every table has a natural
unique key and rows go in with INSERT OR IGNORE - and the read methods below answer the
questions the trace engine asks. No stitching happens here.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import secrets
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import sqlite_utils

from whodid import private

from . import migrations
from . import outages as outages_mod
from .events import AUDIT_BOOT_PREFIX, AUID_UNSET
from .idcache import IdCache, IdSet
from .outages import Outage, Run


# past this many logins in a window (fleet-wide), logins_open finds a boot's by its processes' ids
LOGINS_BY_PROC = 2000
MAX_CMD_IDS = 2000           # past this many matching command lines, a search scans the window instead
# /proc gives a process's start in USER_HZ ticks (100 a second on Linux): an agent that finds a
# process already running names it by that tick, in ns - a multiple of this (docs/events.md)
TICK_NS = 10_000_000


# write()'s commonest statements, held back and sent together (Store._hold)
EXIT_SQL = ("UPDATE procs SET exit_ts = ?1, exit_code = ?2, exit_signal = ?3 WHERE id = ?4 "
            "AND (exit_ts IS NOT ?1 OR exit_code IS NOT ?2 OR exit_signal IS NOT ?3)")
# How many ids the store's caches keep a generation (tracer/idcache.py; at most twice this):
# processes - a fork, its exec and its exit come within seconds, so a generation of ~30,000
# covers the last two minutes of a host starting 300 a second, ~10 MB; command lines - a few
# thousand programs and scripts run again and again, the rest are one-offs not worth keeping.
PROC_IDS_KEPT = 32_768
CMD_IDS_KEPT = 8_192

EXEC_SQL = ("INSERT OR IGNORE INTO execs (proc, ts, cmd, cmd_id, argv, truncated, exe, cwd, uid, euid, gid, egid, "
            "auid, ses, tty, comm, pidns, container, snapshot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class ConnMatch:
    """Which connections a question asks about (trace.Query's to:, from:, listen:), in the
    store's terms. `direction` is the row's dir: `connect` (to:), `accept` (from:), `listen`.
    An address is the remote end's (the local one for a listen); `port` the remote port of a
    connect, the local port of an accept (what the outsider came to) or of a listen. No
    address, network or name: any address. Names are lowercase globs of `rname`."""
    direction: str
    addrs: tuple[str, ...] = ()
    nets: tuple[str, ...] = ()          # CIDR text, tested by whodid_in_nets
    names: tuple[str, ...] = ()
    port: int | None = None
    command: tuple[str, bool] | None = None    # (pattern, glob): the process ran a matching command


@functools.lru_cache(maxsize=256)
def _nets(text: str) -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in text.split(",") if n)


def in_nets(addr: str | None, nets: str) -> int:
    """SQL function whodid_in_nets(addr, 'cidr,cidr'): is addr in one of the networks?"""
    if not addr:
        return 0
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return 0
    return int(any(ip.version == n.version and ip in n for n in _nets(nets)))


def _conn_last(until: float | None) -> str:
    """SQL for a group's last connection: a row the agent counted (over a uid's budget) stands
    for n connections, the last at last_ts - unless that is past the question's `until` (a count
    that ran on past a canary's failure): then only its first time is known to be in the window,
    and a count running past the failure never reads as the latest connection before it."""
    if until is None:
        return "max(coalesce(c.last_ts, c.ts))"
    return f"max(CASE WHEN c.last_ts IS NULL OR c.last_ts > {float(until)!r} THEN c.ts ELSE c.last_ts END)"


class StoreError(Exception):
    """A store that cannot be used, explained for a person."""


@dataclass(frozen=True)
class Proc:
    id: int
    host: str
    host_id: int
    boot: int
    pid: int
    start: int
    parent: int | None
    parent_by_fork: bool
    fork_ts: float | None
    exit_ts: float | None
    exit_code: int | None


@dataclass(frozen=True)
class Image:
    """One exec of a process: what it ran, as whom, when."""
    proc: int
    ts: float
    argv: list[str]
    cmd: str
    exe: str | None
    cwd: str | None
    uid: int | None
    euid: int | None
    auid: int | None
    ses: int | None
    tty: str | None
    container: str | None
    snapshot: bool
    pidns: int | None = None        # the pid namespace's inode, as the kernel gave it at exec


PROC_COLS = ("p.id, h.name, h.id, p.boot, p.pid, p.start, p.parent, p.parent_by_fork, "
             "p.fork_ts, p.exit_ts, p.exit_code")
PROC_FROM = "procs p JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host"
IMAGE_COLS = "proc, ts, cmd, argv, exe, cwd, uid, euid, auid, ses, tty, container, snapshot, pidns"


def _proc(row) -> Proc:
    return Proc(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8], row[9], row[10])


def _image(row) -> Image:
    argv = json.loads(row[3]) if row[3] is not None else row[2].split(" ")
    return Image(row[0], row[1], argv, row[2], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
                 row[11], bool(row[12]), row[13])


def command_line(argv: list[str]) -> tuple[str, str | None]:
    """(cmd, argv_json): argv_json only when joining with spaces would lose information - as it
    would for an argument that was not UTF-8, which cmd shows as \\xHH (see shown) and argv_json
    keeps exactly (JSON's \\udcXX escapes)."""
    cmd = " ".join(argv)
    if not cmd.isascii():
        cmd = shown(cmd)
    return cmd, (None if cmd.split(" ") == argv else json.dumps(argv))


def _argv_of(cmd: str, argv_json: str | None) -> list[str]:
    return json.loads(argv_json) if argv_json else cmd.split(" ")


def restates(seen_comm: str | None, seen: list[str], seen_cut: bool,
             snap_comm: str | None, snap: list[str], snap_cut: bool) -> bool:
    """Whether a /proc snapshot of a process (snap) restates its last seen exec (seen) rather
    than showing another program it exec'd while no agent ran. A process may rewrite its own
    title (sshd's `sshd: jim [priv]`, postgres, nginx); such a title begins with the name of
    the program (or its comm), so a snapshot under the same comm whose first word names the
    program is that exec retitled. Any other argv[0] under the same comm is a new exec: `exec -a
    foo python3 -c ...` after `python3 deploy.py` is not a title python3 gave itself. The same
    program with other arguments (`python3 deploy.py`, then `python3 -c ...`) is a new exec.
    A truncated argv is compared up to where it was cut: the cut one must be a prefix of the other."""
    if seen_comm is not None and snap_comm is not None and seen_comm != snap_comm:
        return False
    if seen == snap:
        return True
    if not seen or not snap or _program(seen[0]) != _program(snap[0]):
        return seen_comm is not None and seen_comm == snap_comm and bool(seen) and bool(snap) \
            and _titled(snap[0], _program(seen[0]), seen_comm)
    a, b = seen[1:], snap[1:]
    if seen_cut or snap_cut:
        return (seen_cut and _cut_prefix(a, b)) or (snap_cut and _cut_prefix(b, a))
    return a == b


def _program(arg0: str) -> str:
    return os.path.basename(arg0.lstrip("-")) or arg0


def _cut_prefix(cut: list[str], full: list[str]) -> bool:
    """Whether an argv cut at the agent's limit (cut) may be the start of full: every argument
    it kept, the last of which may itself be cut short."""
    n = len(cut)
    if n == 0:
        return True
    return len(full) >= n and cut[:n - 1] == full[:n - 1] and full[n - 1].startswith(cut[n - 1])


def _titled(title: str, program: str, comm: str) -> bool:
    """Whether a process title (`sshd: jim [priv]`, `postgres: checkpointer`, `nginx: worker
    process`) begins with the name of the program it retitles; comm is cut at 15 bytes."""
    words = title.split()
    first = words[0].strip("[]").rstrip(":") if words else ""
    first = _program(first)
    return bool(first) and (first == program or first == comm or (len(comm) == 15 and first.startswith(comm)))


def shown(text: str) -> str:
    """text as SQLite can hold it (UTF-8): each byte that was not UTF-8 (a surrogateescape
    U+DC80-U+DCFF, as the agent decodes paths and arguments) becomes the four characters \\xHH,
    the way `ls -b` shows it. Anything else stays as it is."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:               # other lone surrogates; events.py refuses them
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _shown_event(ev: dict[str, Any]) -> dict[str, Any]:
    """The event with every string field SQLite cannot take as text written as shown() says;
    argv stays exact (it is stored as JSON)."""
    return {k: shown(v) if isinstance(v, str) and not v.isascii() else v for k, v in ev.items()}


UCONN_COLS = ("client_proc", "server_proc", "listener_proc", "path", "bound", "ts_connect", "ts_accept",
              "client_uid", "server_uid", "client_pid", "listener_pid", "snapshot")


def merge_uconn(old: dict[str, Any] | None, ev: dict[str, Any], proc: int, peer: int | None,
                ident: Callable[[int], tuple[int, int] | None] = lambda proc: None) -> dict[str, Any]:
    """A unix connection's row after one more of its events (`proc` its process, `peer` the
    process its peer_pid/peer_start name). Each column is a function of the set of events, so
    the row is the same whichever arrives first and a resend changes nothing:
    - the client is the uconnect's process; the uaccept's peer only until the uconnect comes;
    - the server is the uaccept's process, the listener the uconnect's peer;
    - path is what the client connected to, else the uaccept's bound name; bound is the
      uconnect's `bound`, else the uaccept's path (both name the listener's bound name);
    - the peers' uids and pids are what SO_PEERCRED said (the uconnect's of the listener,
      the uaccept's of the client), a pid kept even when no start came to name its process;
    - a time is the earliest reported for its side (a snapshot's is when it was found: later);
    - snapshot holds while every event of the connection was one;
    - of two events of one side naming different processes (a faulty or lying producer: the
      agent's conn ids are unique), the earliest says what that side's columns hold, a tie in
      time to the lower (pid, start) - `ident` gives a stored process's, asked only on a tie -
      not whichever came last, so a re-ingest in another order names the same
      client (a field the earliest event does not carry - its peer, bound - may still hold the
      other's word, in one order and not the other: not yet mended); events of one side naming the same process (a resend, the same connection
      found again by a restarted agent) merge as above."""
    row = dict(old) if old else dict.fromkeys(UCONN_COLS)
    snap = int(bool(ev.get("snapshot")))
    row["snapshot"] = snap if old is None else int(bool(row["snapshot"]) and bool(snap))
    ts = ev["ts"]
    connect = ev["kind"] == "uconnect"
    first, named = (row["ts_connect"], row["client_proc"]) if connect else (row["ts_accept"], row["server_proc"])
    if first is not None and named is not None and named != proc and \
            (ts > first or (ts == first and ((holder := ident(named)) is None or (ev["pid"], ev["start"]) > holder))):
        return row                          # an earlier event of this side named another process
    if connect:
        row["client_proc"] = proc
        row["listener_proc"] = peer if peer is not None else row["listener_proc"]
        row["path"] = ev["path"]
        row["bound"] = ev.get("bound", row["bound"])
        row["ts_connect"] = ts if row["ts_connect"] is None else min(row["ts_connect"], ts)
        row["server_uid"] = ev.get("peer_uid", row["server_uid"])
        row["listener_pid"] = ev.get("peer_pid", row["listener_pid"])
    else:
        row["server_proc"] = proc
        if row["ts_connect"] is None and peer is not None:     # no uconnect yet: its word wins
            row["client_proc"] = peer
        if row["path"] is None:
            row["path"] = ev.get("path")
        if row["bound"] is None:
            row["bound"] = ev.get("path")
        row["ts_accept"] = ts if row["ts_accept"] is None else min(row["ts_accept"], ts)
        row["client_uid"] = ev.get("peer_uid", row["client_uid"])
        row["client_pid"] = ev.get("peer_pid", row["client_pid"])
    return row


class Store:
    def __init__(self, db: sqlite_utils.Database, path: str):
        self.db = db
        self.path = path
        self._hosts: dict[str, int] = {}
        self._boots: dict[tuple[int, str], int] = {}
        # bounded (tracer/idcache.py): a collector's memory stays flat however long it ingests
        self._procs: IdCache[tuple[int, int, int], int] = IdCache(PROC_IDS_KEPT)
        self._cmds: IdCache[str, int] = IdCache(CMD_IDS_KEPT)
        self._generation: str | None = None
        # _fresh holds only while no other Store on this file writes a snapshot of one of its
        # processes: a Store that writes snapshots bumps this counter, and the others, seeing it
        # move, forget _fresh (snapshots come only when an agent restarts: rare)
        self._snapshot_generation: str | None = None
        self._wrote_snapshot = False
        self._tick_boots: set[int] = set()          # boots whose processes an agent names (_proc_id)
        # processes this store created from their fork and holds no snapshot image of: an exec
        # of one has no snapshot to restate it, so _write_exec skips that lookup (most execs)
        self._fresh = IdSet(PROC_IDS_KEPT)
        self._found_running: dict[tuple[int, int, int], dict[str, Any]] = {}   # write()'s batch
        # write()'s batch, in fewer statements (see write): rows of the commonest statements
        # held back and sent with one executemany each, and how many of them were new facts
        self._held: dict[str, list[tuple]] = {}
        self._held_new = 0

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False) -> "Store":
        """The store at path (made, private, if create). Every failure is a StoreError that says
        what happened in a person's words (store_error), never an SQLite exception."""
        path = str(path)
        try:
            return cls._open(path, create)
        except sqlite3.Error as exc:
            raise store_error(exc, path) from None

    @classmethod
    def _open(cls, path: str, create: bool) -> "Store":
        conn, read_only = _connect(path, create)
        db = sqlite_utils.Database(conn)
        try:
            # tables first: a store being created elsewhere shows its tables and its version in
            # one commit, so reading them in this order never sees tables without a version
            tables = set(db.table_names())
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if _code(exc) == sqlite3.SQLITE_NOTADB:
                raise StoreError(f"{path} is not a whodid store ({exc}). Move it aside, or choose "
                                 "another file with --db.") from None
            raise
        if tables and version == 0:
            raise StoreError(f"{path} is an SQLite database but not a whodid store (it has tables "
                             f"{', '.join(sorted(tables)[:5])}). Choose another file with --db.")
        if version > migrations.LATEST:
            raise StoreError(f"{path} has store schema version {version}, newer than this whodid "
                             f"understands ({migrations.LATEST}). Upgrade whodid.")
        if read_only and version < migrations.LATEST:
            raise StoreError(f"read-only: the store {path} is on a read-only filesystem, and this whodid "
                             f"must first upgrade its schema ({version} to {migrations.LATEST}); copy it "
                             "to a writable place")
        store = cls(db, path)
        # Several agents may open (and create) one store at the same moment; SQLite answers
        # "locked" at once for some of the steps below rather than waiting, so wait here.
        deadline = time.monotonic() + 60
        while True:
            try:
                if not read_only and path != ":memory:" and \
                        db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                # NORMAL with WAL: a commit is not fsynced, the log is at each checkpoint. A
                # crash of the process (the agent's or the collector's: SIGKILL, OOM) loses no
                # committed batch; a crash of the machine may lose the batches committed since
                # the last checkpoint - for an agent in local mode, its last seconds, like the
                # events it still held in memory, and its next start shows the gap as an outage
                # from the last mark that survived - and never leaves the store damaged. FULL
                # cost an fsync per flush, a transaction the agent makes every second.
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA foreign_keys = OFF")   # placeholders may name parents not yet seen
                # damage on a page is found when the page is read, not by a full check at every
                # open (minutes on a big store): this makes SQLite check each b-tree page's cells
                # as it loads them, so more damage is found, and found before it is believed
                db.execute("PRAGMA cell_size_check = ON")
                conn.create_function("whodid_in_nets", 2, in_nets, deterministic=True)
                store._migrate()
                return store
            except sqlite3.OperationalError as exc:
                if ("locked" in str(exc) or "busy" in str(exc)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise

    def _migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= migrations.LATEST:
            return              # the usual case: no write lock to wait for, and a read-only store opens
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]    # under the write lock
            for number, sql in migrations.STEPS:
                if number <= version:
                    continue
                for statement in _split_sql(sql):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self.db.conn.close()

    def transaction(self) -> "_Transaction":
        """A write transaction (nested ones join the outer one); a failure empties the id caches."""
        return _Transaction(self.db.conn, self._forget_ids)

    # --- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    def zero_deleted(self) -> None:
        """From now on this connection overwrites what it deletes with zeros: SQLite otherwise
        leaves deleted bytes in the file (a secret moved out of the store must not stay in it)."""
        self.db.execute("PRAGMA secure_delete = ON")

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the store file now, and empty it."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- writing -------------------------------------------------------------------------

    def write(self, events: Iterable[dict[str, Any]]) -> int:
        """Store validated events in one transaction. Returns how many were new facts
        (0 when every event had been stored before). If the transaction fails (a full disk, at
        any statement or at COMMIT), nothing of it is stored and the caches of ids are emptied
        (see _Transaction): writing the same events again is always safe.

        Fewer statements than events: the commonest rows that nothing in the batch reads back
        (an exec's image, an exit) are held and sent with one executemany each (_hold) - before
        anything reads them (_send_held), so every read sees what came before it."""
        new = 0
        span: dict[int, list[float]] = {}
        names: dict[tuple[int, int], str] = {}
        events = list(events)
        with self.transaction():
            self._check_generation()
            self._found_running = self._running_at_restart(events)
            try:
                for ev in events:
                    try:
                        new += self._write_event(ev, span, names)
                    except UnicodeEncodeError:
                        # a string with bytes that were not UTF-8: SQLite's text is UTF-8, so it is
                        # stored as shown() writes it. The statement that refused it did not run, and
                        # the ones before it are idempotent, so the event is simply written again.
                        new += self._write_event(_shown_event(ev), span, names)
                self._send_held()
                new += self._held_new
            finally:
                self._found_running = {}
                self._held, self._held_new = {}, 0
            if self._wrote_snapshot:
                self._wrote_snapshot = False
                self._snapshot_generation = str(int(self.get_meta("snapshot_generation") or 0) + 1)
                self.set_meta("snapshot_generation", self._snapshot_generation)
            self.db.conn.executemany("INSERT OR REPLACE INTO users (host, uid, name) VALUES (?, ?, ?)",
                                     [(h, uid, name if name.isascii() else shown(name))
                                      for (h, uid), name in names.items()])
            self.db.conn.executemany("UPDATE hosts SET first_ts = min(coalesce(first_ts, ?), ?), "
                                     "last_ts = max(coalesce(last_ts, ?), ?) WHERE id = ?",
                                     [(lo, lo, hi, hi, h) for h, (lo, hi) in span.items()])
        return new

    def _write_event(self, ev: dict[str, Any], span: dict[int, list[float]],
                     names: dict[tuple[int, int], str]) -> int:
        """One event, inside write()'s transaction: how many new facts it was (0 or 1)."""
        c = self.db.conn
        new = 0
        # the ids' caches read here first: most events name a host, boot and process seen before
        host = self._hosts.get(ev["host"]) or self._host_id(ev["host"])
        ts = ev["ts"]
        s = span.get(host)
        if s is None:
            span[host] = [ts, ts]
        elif ts < s[0]:
            s[0] = ts
        elif ts > s[1]:
            s[1] = ts
        kind = ev["kind"]
        if kind == "host":
            new += c.execute(
                "UPDATE hosts SET addrs = coalesce(?1, addrs), os = coalesce(?2, os), "
                "agent = coalesce(?3, agent) WHERE id = ?4 AND (addrs IS NOT coalesce(?1, addrs) "
                "OR os IS NOT coalesce(?2, os) OR agent IS NOT coalesce(?3, agent))",
                [json.dumps(ev["addrs"]) if "addrs" in ev else None, ev.get("os"),
                 ev.get("agent"), host]).rowcount
            if "run" in ev:
                new += self._write_run(c, host, ev)
            return new
        if kind == "loss":
            new += c.execute("INSERT OR IGNORE INTO losses VALUES (?, ?, ?, ?, ?)",
                             [host, ev["since"], ts, ev["count"], ev.get("what")]).rowcount
            return new
        boot = self._boots.get((host, ev["boot"])) or self._boot_id(host, ev["boot"])
        if kind == "fork" and self._new_child(c, boot, ev, ts):
            new += 1
            return new
        proc = self._procs.young.get((boot, ev["pid"], ev["start"])) or self._proc_id(boot, ev["pid"], ev["start"], ts)
        if kind == "exec":
            new += self._write_exec(c, boot, proc, ev)
            for uid_field, name_field in (("uid", "user"), ("euid", "euser"), ("auid", "auser")):
                if name_field in ev and uid_field in ev:
                    names[(host, ev[uid_field])] = ev[name_field]
        elif kind == "fork":
            parent = self._proc_id(boot, ev["ppid"], ev["pstart"], ts)
            new += c.execute(
                "UPDATE procs SET parent = ?1, parent_by_fork = 1, parent_ts = NULL, fork_ts = ?2 "
                "WHERE id = ?3 AND (parent_by_fork = 0 OR parent IS NOT ?1 OR fork_ts IS NOT ?2)",
                [parent, ts, proc]).rowcount
        elif kind == "exit":
            self._hold(EXIT_SQL, (ts, ev.get("code"), ev.get("signal"), proc))
        elif kind == "cred":
            new += c.execute("INSERT OR IGNORE INTO creds (proc, ts, via, old_uid, old_euid, uid, euid, "
                             "old_gid, old_egid, gid, egid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [proc, ts, ev["via"], ev["old_uid"], ev["old_euid"], ev["uid"], ev["euid"],
                              ev.get("old_gid"), ev.get("old_egid"), ev.get("gid"),
                              ev.get("egid")]).rowcount
            for uid_field, name_field in (("uid", "user"), ("euid", "euser"),
                                          ("old_uid", "old_user"), ("old_euid", "old_euser")):
                if name_field in ev:
                    names[(host, ev[uid_field])] = ev[name_field]
        elif kind == "login":
            new += c.execute(
                "INSERT OR IGNORE INTO logins (proc, ts, user, uid, method, key_fp, key_type, "
                "raddr, rport, laddr, lport, service, ses, tty) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [proc, ts, ev["user"], ev.get("uid"), ev["method"], ev.get("key_fp"),
                 ev.get("key_type"), ev["raddr"], ev["rport"], ev.get("laddr"), ev.get("lport"),
                 ev.get("service", "sshd"), ev.get("ses"), ev.get("tty")]).rowcount
            if "uid" in ev:
                names[(host, ev["uid"])] = ev["user"]
        elif kind in ("connect", "accept"):
            added = c.execute("INSERT OR IGNORE INTO conns (proc, ts, dir, laddr, lport, raddr, rport, rname, n, "
                              "last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              [proc, ts, kind, ev["laddr"], ev["lport"], ev["raddr"], ev["rport"],
                               ev.get("rname"), ev.get("count"), ev.get("last")]).rowcount
            if not added and ev.get("rname"):
                # the same connection stored before without its name (an older agent, a copy
                # that lost it): the name fills in, whichever copy came first
                c.execute("UPDATE conns SET rname = ? WHERE proc = ? AND ts = ? AND dir = ? AND lport = ? "
                          "AND raddr = ? AND rport = ? AND rname IS NULL",
                          [ev["rname"], proc, ts, kind, ev["lport"], ev["raddr"], ev["rport"]])
            new += added
        elif kind == "listen":
            # no remote end: '' and 0, not NULL, so the UNIQUE key holds and a replay is one row
            new += c.execute("INSERT OR IGNORE INTO conns (proc, ts, dir, laddr, lport, raddr, rport) "
                             "VALUES (?, ?, 'listen', ?, ?, '', 0)",
                             [proc, ts, ev["laddr"], ev["lport"]]).rowcount
        elif kind in ("uconnect", "uaccept"):
            new += self._write_uconn(c, boot, proc, ev)
        elif kind == "file":
            new += c.execute("INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [proc, ts, ev["op"], ev["path"], ev.get("path2"), ev.get("mode"),
                              ev.get("uid"), ev.get("gid"), ev.get("euid")]).rowcount
            if "euser" in ev and "euid" in ev:
                names[(host, ev["euid"])] = ev["euser"]
        return new

    def _write_uconn(self, c, boot: int, proc: int, ev: dict[str, Any]) -> int:
        """A unix connection's uconnect or uaccept, joined with what is stored of it (its other
        event may have come first: merge_uconn). Returns 1 when the row is new or changed."""
        peer = None
        if "peer_pid" in ev and "peer_start" in ev:
            peer = self._proc_id(boot, ev["peer_pid"], ev["peer_start"], ev["ts"])
        row = c.execute(f"SELECT id, {', '.join(UCONN_COLS)} FROM uconns WHERE boot = ? AND conn = ?",
                        [boot, ev["conn"]]).fetchone()
        old = dict(zip(UCONN_COLS, row[1:])) if row else None
        merged = merge_uconn(old, ev, proc, peer, lambda named: c.execute(
            "SELECT pid, start FROM procs WHERE id = ?", [named]).fetchone())
        if merged == old:
            return 0
        if row is None:
            c.execute(f"INSERT INTO uconns (boot, conn, {', '.join(UCONN_COLS)}) "
                      f"VALUES (?, ?, {', '.join('?' * len(UCONN_COLS))})",
                      [boot, ev["conn"], *(merged[k] for k in UCONN_COLS)])
        else:
            c.execute(f"UPDATE uconns SET {', '.join(k + ' = ?' for k in UCONN_COLS)} WHERE id = ?",
                      [*(merged[k] for k in UCONN_COLS), row[0]])
        return 1

    def _write_run(self, c, host: int, ev: dict[str, Any]) -> int:
        """A mark of an agent run (start, heartbeat, stop): the run's first and last marks widen to
        take it in, whatever order the marks arrive in. Returns 1 when the run changed."""
        ts, state = ev["ts"], ev["state"]
        started, stopped = (ts if state == "start" else None), (ts if state == "stop" else None)
        return c.execute(
            "INSERT INTO agent_runs (host, boot, run, first, last, started, stopped) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6) "
            "ON CONFLICT (host, run) DO UPDATE SET first = min(first, ?4), last = max(last, ?4), "
            "started = coalesce(started, ?5), stopped = coalesce(stopped, ?6) "
            "WHERE ?4 < first OR ?4 > last OR (started IS NULL AND ?5 IS NOT NULL) "
            "OR (stopped IS NULL AND ?6 IS NOT NULL)",
            [host, self._boot_id(host, ev["boot"]), ev["run"], ts, started, stopped]).rowcount

    def _write_exec(self, c, boot: int, proc: int, ev: dict[str, Any]) -> int:
        cmd, argv_json = command_line(ev["argv"])
        ts = ev["ts"]
        if ev.get("snapshot"):
            self._send_held()                   # the images held back are read below
            self._fresh.discard(proc)
            # A restarted agent's /proc snapshot of a process whose exec was seen restates that
            # image, dated at the fork: kept, it would stand before its own exec on a chain (and
            # read as a change of user when the exec was sudo's or sshd's). A snapshot of another
            # program (comm, else argv) is an exec made while no agent ran: it goes after the
            # images seen, as it happened after them.
            # Only the last seen image can be restated: /proc shows what the process is now.
            last = c.execute("SELECT ts, comm, cmd, argv, truncated FROM execs WHERE proc = ? AND snapshot IS NULL "
                             "ORDER BY ts DESC LIMIT 1", [proc]).fetchone()
            if last is not None:
                if restates(last[1], _argv_of(last[2], last[3]), bool(last[4]),
                            ev.get("comm"), ev["argv"], bool(ev.get("truncated"))):
                    return 0
                ts = max(ts, last[0] + 1e-6)
            self._wrote_snapshot = True
        elif proc not in self._fresh:
            # the seen exec arrived after a snapshot (a spool sent late): a snapshot restating it
            # goes; one of another program is an exec made later, while no agent ran
            self._send_held()
            for sid, sts, comm, scmd, sargv, strunc in c.execute(
                    "SELECT id, ts, comm, cmd, argv, truncated FROM execs WHERE proc = ? AND snapshot = 1 AND ts <= ?",
                    [proc, ts]).fetchall():
                if restates(ev.get("comm"), ev["argv"], bool(ev.get("truncated")), comm, _argv_of(scmd, sargv),
                            bool(strunc)):
                    c.execute("DELETE FROM execs WHERE id = ?", [sid])
                elif not ev["boot"].startswith(AUDIT_BOOT_PREFIX):
                    # an agent's snapshot is dated at the fork, not when it was read; the auditd
                    # source's images of a process before its exec are dated when they were seen
                    c.execute("UPDATE OR IGNORE execs SET ts = ? WHERE id = ?", [ts + 1e-6, sid])
        self._hold(EXEC_SQL, (proc, ts, cmd, self._cmd_id(cmd), argv_json, 1 if ev.get("truncated") else None,
                              ev.get("exe"), ev.get("cwd"), ev["uid"], ev["euid"], ev.get("gid"), ev.get("egid"),
                              ev.get("auid"), ev.get("ses"), ev.get("tty"), ev.get("comm"), ev.get("pidns"),
                              ev.get("container"), 1 if ev.get("snapshot") else None))
        if "ppid" in ev and "pstart" in ev:
            # Only the earliest exec may name the parent, and never over a fork's word:
            # a later exec may see the reaper (pid 1) after the real parent exited.
            parent = self._proc_id(boot, ev["ppid"], ev["pstart"], ev["ts"])
            if parent != proc:
                c.execute("UPDATE procs SET parent = ?, parent_ts = ? WHERE id = ? AND parent_by_fork = 0 "
                          "AND (parent_ts IS NULL OR parent_ts > ?)", [parent, ev["ts"], proc, ev["ts"]])
        return 0                                # the image is new or not when it is sent (_send_held)

    def _hold(self, sql: str, row: tuple) -> None:
        """Hold a row of one of the commonest statements, to be sent with its kin in one
        executemany. A string SQLite cannot take (a lone surrogate) is refused here, as the
        statement would refuse it, so write() writes that event again as shown()."""
        for value in row:
            if type(value) is str and not value.isascii():
                value.encode()
        rows = self._held.get(sql)
        if rows is None:
            rows = self._held[sql] = []
        rows.append(row)

    def _send_held(self) -> None:
        """Send the rows held back (_hold): before anything reads their tables, and at the end
        of write()."""
        for sql, rows in self._held.items():
            self._held_new += self.db.conn.executemany(sql, rows).rowcount
        self._held.clear()

    def _running_at_restart(self, events: list[dict[str, Any]]) -> dict[tuple[int, int, int], dict[str, Any]]:
        """The execs in a batch of processes an agent named by /proc's start tick, by (boot,
        pid, start): what a restarted agent says of a process it found running - its parent, its
        uid, its login uid and audit session - which decides whether it is the process whose fork
        an earlier agent saw (_seen_forked). Gathered before writing: a child's event may name
        its parent before the parent's own record comes."""
        out: dict[tuple[int, int, int], dict[str, Any]] = {}
        for ev in events:
            if ev.get("kind") != "exec" or ev["start"] % TICK_NS or ev["boot"].startswith(AUDIT_BOOT_PREFIX):
                continue
            try:
                key = (self._boot_id(self._host_id(ev["host"]), ev["boot"]), ev["pid"], ev["start"])
            except UnicodeEncodeError:      # a name SQLite cannot take as it is; written as shown()
                key = (self._boot_id(self._host_id(shown(ev["host"])), shown(ev["boot"])), ev["pid"], ev["start"])
            out.setdefault(key, ev)
        return out

    def _new_child(self, c, boot: int, ev: dict[str, Any], ts: float) -> bool:
        """A fork of a process not seen before: one row with its parent, rather than an empty
        row and then an update (most forks are such; a third of ingest's statements were)."""
        key = (boot, ev["pid"], ev["start"])
        if key in self._procs:
            return False
        parent = self._procs.young.get((boot, ev["ppid"], ev["pstart"])) or \
            self._proc_id(boot, ev["ppid"], ev["pstart"], ts)
        cur = c.execute("INSERT OR IGNORE INTO procs (boot, pid, start, parent, parent_by_fork, fork_ts) "
                        "VALUES (?, ?, ?, ?, 1, ?)", [*key, parent, ts])
        if not cur.rowcount:
            return False                      # stored before: the usual path updates it
        self._remember_proc(key, cur.lastrowid)
        self._fresh.add(cur.lastrowid)
        return True

    def _check_generation(self) -> None:
        """Ids cached by this connection die when a prune (maybe from another process) deletes
        rows; prune bumps a counter, and seeing it move empties the caches."""
        gen = self.get_meta("prune_generation")
        if gen != self._generation:
            self._forget_ids()
            self._generation = gen
        snaps = self.get_meta("snapshot_generation")
        if snaps != self._snapshot_generation:
            self._fresh.clear()
            self._snapshot_generation = snaps

    def _forget_ids(self) -> None:
        self._hosts.clear()
        self._boots.clear()
        self._procs.clear()
        self._cmds.clear()
        self._tick_boots.clear()
        self._fresh.clear()

    def _cmd_id(self, cmd: str) -> int:
        cid = self._cmds.young.get(cmd) or self._cmds.get(cmd)
        if cid is None:
            c = self.db.conn
            cur = c.execute("INSERT OR IGNORE INTO cmds (cmd) VALUES (?)", [cmd])
            cid = cur.lastrowid if cur.rowcount else c.execute("SELECT id FROM cmds WHERE cmd = ?", [cmd]).fetchone()[0]
            self._cmds[cmd] = cid
        return cid

    def _host_id(self, name: str) -> int:
        hid = self._hosts.get(name)
        if hid is None:
            c = self.db.conn
            c.execute("INSERT OR IGNORE INTO hosts (name) VALUES (?)", [name])
            hid = c.execute("SELECT id FROM hosts WHERE name = ?", [name]).fetchone()[0]
            self._hosts[name] = hid
        return hid

    def _boot_id(self, host: int, boot: str) -> int:
        key = (host, boot)
        bid = self._boots.get(key)
        if bid is None:
            c = self.db.conn
            c.execute("INSERT OR IGNORE INTO boots (host, boot) VALUES (?, ?)", key)
            bid = c.execute("SELECT id FROM boots WHERE host = ? AND boot = ?", key).fetchone()[0]
            self._boots[key] = bid
            if not boot.startswith(AUDIT_BOOT_PREFIX):
                self._tick_boots.add(bid)
        return bid

    def _proc_id(self, boot: int, pid: int, start: int, ts: float) -> int:
        """The row of process (boot, pid, start), made if new. On a boot an agent names, an
        event at `ts` naming a start /proc gave (a whole tick) means the process whose fork an
        earlier agent saw in that tick, if one lived then and what the restarted agent says of
        it agrees (_seen_forked). A join made without that word is not remembered, so the
        restarted agent's exec, when it comes, is still weighed; a refused join makes the
        tick-named row, which every later event then finds."""
        key = (boot, pid, start)
        pid_ = self._procs.get(key)
        if pid_ is None and start % TICK_NS == 0 and boot in self._tick_boots:
            self._send_held()                   # _seen_forked reads exits and images
            c = self.db.conn
            row = c.execute("SELECT id FROM procs WHERE boot = ? AND pid = ? AND start = ?", key).fetchone()
            if row:
                pid_ = row[0]
                self._remember_proc(key, pid_)
            else:
                pid_, weighed = self._seen_forked(boot, pid, start, ts)
                if pid_ is not None and weighed:
                    self._remember_proc(key, pid_)
        if pid_ is None:
            c = self.db.conn
            cur = c.execute("INSERT OR IGNORE INTO procs (boot, pid, start) VALUES (?, ?, ?)", key)
            if cur.rowcount:
                pid_ = cur.lastrowid
            else:
                pid_ = c.execute("SELECT id FROM procs WHERE boot = ? AND pid = ? AND start = ?", key).fetchone()[0]
            self._remember_proc(key, pid_)
        return pid_

    def _seen_forked(self, boot: int, pid: int, tick_start: int, ts: float) -> tuple[int | None, bool]:
        """(the process an agent saw fork that a restarted agent, finding it running, named by
        /proc's start tick, or None; whether the restarted agent's word was weighed). The seen
        process has the same pid, forked within that tick (the fork record comes a little after
        the kernel stamps the start, so up to one tick more), and is still alive at ts. Only a
        /proc-named process is joined to a seen fork, never two seen forks to each other - pids
        reused within a tick stay two processes. Of two candidates, the later fork: the earlier
        one had exited for its pid to be reused.

        A pid reused within the tick after the seen process's exit was lost (the agent was
        down) looks the same by pid and time, so the restarted agent's exec for the tick name,
        when the batch has it, must agree with the seen process (_same_process): a join that
        names the wrong process names the wrong person."""
        row = self.db.conn.execute(
            "SELECT id FROM procs WHERE boot = ? AND pid = ? AND start > ? AND start < ? AND parent_by_fork = 1 "
            "AND (exit_ts IS NULL OR exit_ts >= ?) ORDER BY start DESC LIMIT 1",
            [boot, pid, tick_start, tick_start + 2 * TICK_NS, ts]).fetchone()
        if row is None:
            return None, True
        said = self._found_running.get((boot, pid, tick_start))
        if said is None:
            return row[0], False
        return (row[0] if self._same_process(boot, row[0], said) else None), True

    def _same_process(self, boot: int, proc: int, said: dict[str, Any]) -> bool:
        """Whether what a restarted agent says of a process it found running (`said`, its exec)
        fits the seen process `proc`: its parent is the seen parent, or a reaper that adopted
        it (_adopted_by: init, or an ancestor - a subreaper); its uid,
        login uid and audit session are the seen process's last known ones (its own, else its
        parent's at the fork). What either side does not know cannot disagree."""
        c = self.db.conn
        parent, fork_ts = c.execute("SELECT parent, fork_ts FROM procs WHERE id = ?", [proc]).fetchone()
        if "ppid" in said and "pstart" in said and \
                not self._adopted_by(boot, parent, said["ppid"], said["pstart"]):
            return False
        known = self._ids_of(proc, None)
        if not known and parent is not None:
            known = self._ids_of(parent, fork_ts)
        for name in ("uid", "auid", "ses"):
            mine, theirs = known.get(name), said.get(name)
            if name != "uid" and AUID_UNSET in (mine, theirs):
                continue
            if mine is not None and theirs is not None and mine != theirs:
                return False
        return True

    def _adopted_by(self, boot: int, parent: int | None, ppid: int, pstart: int) -> bool:
        """Whether /proc's parent (ppid, pstart) is the seen parent, or - the seen parent gone:
        the restarted agent did not find it running - init or one of its ancestors (the reaper
        that adopts an orphan). A start /proc gave is a tick at or before the one the seen
        fork gives."""
        def same(pid: int, start: int) -> bool:
            return pid == ppid and (start == pstart or (pstart % TICK_NS == 0 and pstart <= start < pstart + 2 * TICK_NS))
        row = self.db.conn.execute("SELECT pid, start, parent FROM procs WHERE id = ?", [parent]).fetchone() \
            if parent is not None else None
        if row is None:
            return False
        if same(row[0], row[1]):
            return True
        tick = row[1] - row[1] % TICK_NS
        if any((boot, row[0], t) in self._found_running for t in (tick, tick - TICK_NS)):
            return False                        # the seen parent lives: its child was not orphaned
        if ppid == 1:
            return True
        seen: set[int] = set()
        parent = row[2]
        while parent is not None and parent not in seen and len(seen) < 64:
            seen.add(parent)
            row = self.db.conn.execute("SELECT pid, start, parent FROM procs WHERE id = ?", [parent]).fetchone()
            if row is None:
                return False
            if same(row[0], row[1]):
                return True
            parent = row[2]
        return False

    def _ids_of(self, proc: int, before: float | None) -> dict[str, int | None]:
        """The uid, login uid and audit session proc last had (before `before`, if given), by
        its execs and credential changes; {} when none is recorded."""
        c = self.db.conn
        limit = "" if before is None else " AND ts <= ?"
        args = [proc] if before is None else [proc, before]
        exe = c.execute(f"SELECT ts, uid, auid, ses FROM execs WHERE proc = ?{limit} ORDER BY ts DESC LIMIT 1",
                        args).fetchone()
        cred = c.execute(f"SELECT ts, uid FROM creds WHERE proc = ?{limit} ORDER BY ts DESC LIMIT 1",
                         args).fetchone()
        out: dict[str, int | None] = {}
        if exe:
            out = {"uid": exe[1], "auid": exe[2], "ses": exe[3]}
        if cred and (exe is None or cred[0] >= exe[0]):
            out["uid"] = cred[1]
        return out

    def _remember_proc(self, key: tuple[int, int, int], proc_id: int) -> None:
        self._procs[key] = proc_id

    # --- reading: processes --------------------------------------------------------------

    def proc(self, proc_id: int) -> Proc:
        row = self.db.execute(f"SELECT {PROC_COLS} FROM {PROC_FROM} WHERE p.id = ?", [proc_id]).fetchone()
        return _proc(row)

    def procs(self, ids: Iterable[int]) -> dict[int, Proc]:
        ids = list(ids)
        out: dict[int, Proc] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.db.execute(f"SELECT {PROC_COLS} FROM {PROC_FROM} WHERE p.id IN "
                                   f"({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update((r[0], _proc(r)) for r in rows)
        return out

    def boot_name(self, boot_id: int) -> str:
        """The boot id as the host reported it (Proc.boot is the store's row id for it)."""
        return self.db.execute("SELECT boot FROM boots WHERE id = ?", [boot_id]).fetchone()[0]

    def find_proc(self, host: str, boot: str, pid: int, start: int) -> Proc | None:
        """The process with this identity - what a signed link or button pins - if still stored."""
        row = self.db.execute(f"SELECT {PROC_COLS} FROM {PROC_FROM} WHERE h.name = ? AND b.boot = ? AND p.pid = ? "
                              "AND p.start = ?", [host, boot, pid, start]).fetchone()
        return _proc(row) if row else None

    def file_changes(self, proc_id: int, ts: float) -> list[dict[str, Any]]:
        """The file changes a process made at ts (a pinned file-change match)."""
        rows = self.db.execute("SELECT proc, ts, op, path, path2, mode, uid, gid, euid FROM files "
                               "WHERE proc = ? AND ts = ? ORDER BY op, path", [proc_id, ts])
        return [dict(zip(("proc", "ts", "op", "path", "path2", "mode", "uid", "gid", "euid"), r)) for r in rows]

    def images(self, proc_id: int) -> list[Image]:
        rows = self.db.execute(f"SELECT {IMAGE_COLS} FROM execs WHERE proc = ? ORDER BY ts", [proc_id])
        return [_image(r) for r in rows]

    def creds(self, proc_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT ts, via, old_uid, old_euid, uid, euid FROM creds WHERE proc = ? "
                               "ORDER BY ts", [proc_id])
        return [dict(zip(("ts", "via", "old_uid", "old_euid", "uid", "euid"), r)) for r in rows]

    def images_of(self, proc_ids: Iterable[int]) -> dict[int, list[Image]]:
        """images() of many processes in one statement per 500: a subtree's level at once."""
        ids = list(proc_ids)
        out: dict[int, list[Image]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for r in self.db.execute(f"SELECT {IMAGE_COLS} FROM execs WHERE proc IN "
                                     f"({','.join('?' * len(chunk))}) ORDER BY proc, ts", chunk):
                out.setdefault(r[0], []).append(_image(r))
        return out

    def children(self, proc_ids: Iterable[int], between: tuple[float, float] | None = None) -> list[int]:
        """The processes whose parent is one of proc_ids; with `between`, only those that came
        to be (forked, or first exec'd naming the parent) in that window - a daemon's children over
        a month are thousands, and only the window's are read (index procs_parent_at)."""
        ids = list(proc_ids)
        out: list[int] = []
        when = " AND coalesce(fork_ts, parent_ts) BETWEEN ? AND ?" if between else ""
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out.extend(r[0] for r in self.db.execute(
                f"SELECT id FROM procs WHERE parent IN ({','.join('?' * len(chunk))}){when} ORDER BY id",
                [*chunk, *(between or ())]))
        return out

    def user_name(self, host_id: int, uid: int | None) -> str | None:
        if uid is None:
            return None
        row = self.db.execute("SELECT name FROM users WHERE host = ? AND uid = ?", [host_id, uid]).fetchone()
        return row[0] if row else None

    # --- reading: logins and connections ---------------------------------------------------

    LOGIN_COLS = "l.id, l.proc, l.ts, l.user, l.uid, l.method, l.key_fp, l.raddr, l.rport, l.laddr, l.lport, l.ses"

    def _login(self, row) -> dict[str, Any]:
        keys = ("id", "proc", "ts", "user", "uid", "method", "key_fp", "raddr", "rport", "laddr", "lport", "ses")
        login = dict(zip(keys, row))
        if login["uid"] == 0:
            login["user"] = "root"      # uid 0 is root whatever a host's passwd calls it (`toor`)
        return login

    def login_of(self, proc_id: int) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {self.LOGIN_COLS} FROM logins l WHERE l.proc = ? ORDER BY l.ts LIMIT 1",
                              [proc_id]).fetchone()
        return self._login(row) if row else None

    def logins_of(self, proc_id: int) -> list[dict[str, Any]]:
        """Every login record of one process, oldest first (sshd logs one per connection)."""
        rows = self.db.execute(f"SELECT {self.LOGIN_COLS} FROM logins l WHERE l.proc = ? ORDER BY l.ts, l.id",
                               [proc_id])
        return [self._login(r) for r in rows]

    def logins_by_session(self, boot: int, ses: int) -> list[dict[str, Any]]:
        """The logins of audit session `ses` on a boot: by the session id recorded with the login,
        else - the agent reads it from /proc when sshd's log line comes, and a short session is
        gone by then - by the session its own processes carry: the earliest exec with a session id
        of the login process or its children or grandchildren (sshd's session process, the shell;
        pam_loginuid set it in the login process, and they inherit it)."""
        rows = self.db.execute(f"SELECT {self.LOGIN_COLS} FROM logins l JOIN procs p ON p.id = l.proc "
                               "WHERE p.boot = ? AND l.ses = ? ORDER BY l.ts", [boot, ses]).fetchall()
        rows += self.db.execute(
            "WITH RECURSIVE d(login, proc, depth) AS ("
            " SELECT l.id, l.proc, 0 FROM logins l JOIN procs p ON p.id = l.proc WHERE p.boot = ? AND l.ses IS NULL"
            " UNION ALL SELECT d.login, c.id, d.depth + 1 FROM d JOIN procs c ON c.parent = d.proc WHERE d.depth < 2),"
            " first(login, ses, ts) AS (SELECT d.login, e.ses, min(e.ts) FROM d JOIN execs e ON e.proc = d.proc"
            "  WHERE e.ses IS NOT NULL AND e.ses != ? GROUP BY d.login)"
            f" SELECT {self.LOGIN_COLS} FROM first f JOIN logins l ON l.id = f.login WHERE f.ses = ?",
            [boot, AUID_UNSET, ses]).fetchall()
        return sorted((self._login(r) for r in rows), key=lambda lg: (lg["ts"], lg["id"]))

    def logins_open(self, boot: int, t: float, since: float) -> list[dict[str, Any]]:
        """The logins of one boot that were open at t: begun between `since` and t, and their
        session (the login process) not ended before t - with `end`, that process's exit (None:
        still running, or its exit was not recorded). Never a login that began after t."""
        # logins first, by time (CROSS JOIN keeps that order): a boot has few logins in a window
        # but may have millions of processes, which the planner would otherwise walk. A fleet's
        # window holds tens of thousands of logins, though, each a random read of its process to
        # learn its boot (seconds, cold): then the boot's process ids come first, from the
        # (boot, pid, start) index, a range read in order, and the logins are matched against them.
        fleet = self.db.execute("SELECT count(*) FROM logins WHERE ts BETWEEN ? AND ?", [since, t]).fetchone()[0]
        mine = "p.boot = ?" if fleet <= LOGINS_BY_PROC else "l.proc IN (SELECT id FROM procs WHERE boot = ?)"
        rows = self.db.execute(f"SELECT {self.LOGIN_COLS}, p.exit_ts FROM logins l CROSS JOIN procs p "
                               f"WHERE p.id = l.proc AND l.ts BETWEEN ? AND ? AND {mine} "
                               "AND (p.exit_ts IS NULL OR p.exit_ts >= ?) ORDER BY l.ts", [since, t, boot, t])
        return [{**self._login(r[:-1]), "end": r[-1]} for r in rows]

    def logins_between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT {self.LOGIN_COLS} FROM logins l WHERE l.ts BETWEEN ? AND ? ORDER BY l.ts",
                               [t0, t1])
        return [self._login(r) for r in rows]

    def connects_from(self, addr: str, port: int, t0: float, t1: float) -> list[dict[str, Any]]:
        """Outbound connections whose local end was addr:port, between t0 and t1."""
        rows = self.db.execute("SELECT proc, ts, laddr, lport, raddr, rport FROM conns "
                               "WHERE lport = ? AND laddr = ? AND dir = 'connect' AND ts BETWEEN ? AND ? "
                               "ORDER BY ts", [port, addr, t0, t1])
        return [dict(zip(("proc", "ts", "laddr", "lport", "raddr", "rport"), r)) for r in rows]

    def accepts_by(self, proc_id: int, until: float, limit: int = 3) -> tuple[int, list[str]]:
        """The connections one process accepted at or before `until` - TCP, and unix sockets from
        other processes: (how many, the first few sources as `addr -> :port` or the socket's
        path). A process that connects after serving others (a proxy, a forward, `kubectl proxy
        --unix-socket`) may have connected for one of them (Tracer._connection_trace)."""
        rows = self.db.execute(f"SELECT raddr || ' -> :' || lport, {self._CONN_COUNT}, min(ts) FROM conns c "
                               "WHERE proc = ? AND dir = 'accept' AND ts <= ? GROUP BY raddr, lport "
                               "UNION ALL SELECT 'unix ' || coalesce(path, bound, '?'), count(*), min(ts_accept) "
                               "FROM uconns WHERE server_proc = ? AND ts_accept <= ? "
                               "AND (client_proc IS NULL OR client_proc != server_proc) GROUP BY path, bound "
                               "ORDER BY 3", [proc_id, until, proc_id, until]).fetchall()
        return sum(r[1] for r in rows), [r[0] for r in rows[:limit]]

    def connects_of(self, proc_id: int) -> list[dict[str, Any]]:
        """The outbound connections one process made, earliest first (an sshd session process's
        connects are the `-W`/`-J` channels of its connection: sshmux.py)."""
        rows = self.db.execute("SELECT proc, ts, laddr, lport, raddr, rport FROM conns "
                               "WHERE proc = ? AND dir = 'connect' ORDER BY ts", [proc_id])
        return [dict(zip(("proc", "ts", "laddr", "lport", "raddr", "rport"), r)) for r in rows]

    def connects_to(self, addr: str, port: int | None, t0: float, t1: float) -> list[dict[str, Any]]:
        """Outbound connections to addr[:port] between t0 and t1 (the inferred-hop fallback)."""
        sql = ("SELECT proc, ts, laddr, lport, raddr, rport FROM conns WHERE dir = 'connect' AND raddr = ? "
               "AND ts BETWEEN ? AND ?")
        args: list[Any] = [addr, t0, t1]
        if port is not None:
            sql += " AND rport = ?"
            args.append(port)
        rows = self.db.execute(sql + " ORDER BY ts", args)
        return [dict(zip(("proc", "ts", "laddr", "lport", "raddr", "rport"), r)) for r in rows]

    # --- reading: connections as evidence (issue 21) ---------------------------------------

    def addresses_named(self, name: str) -> list[str]:
        """The addresses connects were made to under this name (the DNS answer the host had at
        connect time: conns.rname), for tracer/names.py's "seen at connect"."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT raddr FROM conns WHERE rname = ? AND dir = 'connect'",
                                              [name.lower()])]

    def connection_groups(self, m: "ConnMatch", *, since: float | None, until: float | None,
                          host_glob: str | None, limit: int, proc: int | None = None) -> list[dict[str, Any]]:
        """The connections matching m in the window, one group per process, newest first (by its
        last connection), at most `limit` groups: {proc, count, first, last, login}. An accepted
        connection that carried a login (its remote end is the login's client) belongs to the
        login's process - the session it became - and `login` is that login's id; else None.
        Grouping is done here, at query time: each connection stays its own row. `proc`: only
        that process's group (a pinned match)."""
        where, args = self._conn_where(m)
        if proc is not None:
            where.append(self._conn_of(m))
            args.append(proc)
        self._window(where, args, "c.ts", since, until, host_glob)
        rows = self.db.execute(
            f"SELECT {self._CONN_KEY} AS who, {self._CONN_COUNT}, min(c.ts), {_conn_last(until)}, max(l.id) "
            f"FROM conns c {self._CONN_FROM} WHERE {' AND '.join(where)} "
            f"GROUP BY who ORDER BY 4 DESC LIMIT ?", [*args, limit]).fetchall()
        return [dict(zip(("proc", "count", "first", "last", "login"), r)) for r in rows]

    def connection_peers(self, m: "ConnMatch", proc: int, *, since: float | None, until: float | None,
                         limit: int = 20) -> list[dict[str, Any]]:
        """One group's connections (as connection_groups made it) by the other end - the
        destination for a connect, the source for an accept, the socket for a listen - most
        used first: {laddr, lport, raddr, rport, rname, count, first, last}."""
        where, args = self._conn_where(m)
        where.append(self._conn_of(m))
        args.append(proc)
        self._window(where, args, "c.ts", since, until, None)
        end = {"connect": "c.raddr, c.rport", "accept": "c.raddr, c.lport"}.get(m.direction, "c.laddr, c.lport")
        rows = self.db.execute(
            f"SELECT min(c.laddr), min(c.lport), min(c.raddr), min(c.rport), max(c.rname), {self._CONN_COUNT}, "
            f"min(c.ts), {_conn_last(until)} FROM conns c {self._CONN_FROM} WHERE {' AND '.join(where)} "
            f"GROUP BY {end} ORDER BY 6 DESC, 8 DESC LIMIT ?",
            [*args, limit]).fetchall()
        return [dict(zip(("laddr", "lport", "raddr", "rport", "rname", "count", "first", "last"), r)) for r in rows]

    def reused_during_counts(self, m: "ConnMatch", proc: int, *, since: float | None,
                             until: float | None) -> list[tuple[int, float, float, float]]:
        """Other processes of the same boot and pid that began while one of this group's counted
        rows was counting: (their id, when they began, the row's first and last time). The agent
        counts by pid and minute, not by start (capture.c's agg_key), so such a row may hold
        their connections too."""
        where, args = self._conn_where(m)
        where.append(self._conn_of(m))
        args.append(proc)
        self._window(where, args, "c.ts", since, until, None)
        began = "coalesce(q.fork_ts, (SELECT min(e.ts) FROM execs e WHERE e.proc = q.id))"
        rows = self.db.execute(
            f"SELECT DISTINCT q.id, {began}, c.ts, c.last_ts FROM conns c {self._CONN_FROM} "
            "JOIN procs q ON q.boot = p.boot AND q.pid = p.pid AND q.id != p.id "
            f"WHERE {' AND '.join(where)} AND c.n IS NOT NULL AND {began} > c.ts AND {began} <= c.last_ts "
            "ORDER BY 2 LIMIT 5", args).fetchall()
        return [tuple(r) for r in rows]

    # an accept's client port and address are the login's: the login is up to LATE_LOGIN after
    # the accept (authentication, the agent reading sshd's log line), on the same boot. A NAT
    # hands one public address and port to several clients, to several local ports at once and
    # one after another, so an accept carries at most one login: to the port it accepted on
    # (a login that does not say its port: the accepting process's child), the earliest after
    # it, and only when no later accept from that client to that port came before the login -
    # else a web server's accept took an ssh login's person, and one session took another's
    _CONN_FROM = ("JOIN procs p ON p.id = c.proc JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host "
                  "LEFT JOIN logins l ON c.dir = 'accept' AND l.id = ("
                  "SELECT l2.id FROM logins l2 JOIN procs lp ON lp.id = l2.proc "
                  "WHERE l2.raddr = c.raddr AND l2.rport = c.rport AND l2.ts BETWEEN c.ts - 5 AND c.ts + 600 "
                  "AND lp.boot = p.boot AND (l2.lport = c.lport OR l2.lport IS NULL AND lp.parent = c.proc) "
                  "AND NOT EXISTS (SELECT 1 FROM conns c2 WHERE c2.dir = 'accept' AND c2.raddr = c.raddr "
                  "AND c2.rport = c.rport AND c2.lport = c.lport AND c2.ts > c.ts AND c2.ts <= l2.ts "
                  "AND c2.proc IN (SELECT id FROM procs WHERE boot = p.boot)) "
                  "ORDER BY l2.ts, l2.id LIMIT 1)")
    _CONN_KEY = "coalesce(l.proc, c.proc)"
    # a row the agent counted (over a uid's budget) stands for n connections, the last at last_ts.
    # total() (a float, cast back) because a host's absurd counts would make sum() raise
    # "integer overflow" and stop every question; past 2**63 the count stays at the largest
    _CONN_COUNT = "CAST(total(coalesce(c.n, 1)) AS INTEGER)"

    def _conn_of(self, m: "ConnMatch") -> str:
        """One group's rows: by the connecting process (an index finds them), or - an accept,
        whose group may be the login it carried - by the group's key."""
        return f"{self._CONN_KEY} = ?" if m.direction == "accept" else "c.proc = ?"

    @staticmethod
    def _conn_where(m: "ConnMatch") -> tuple[list[str], list[Any]]:
        where, args = ["c.dir = ?"], [m.direction]
        addr, port = ("c.laddr", "c.lport") if m.direction == "listen" else (
            "c.raddr", "c.lport" if m.direction == "accept" else "c.rport")
        which = []
        if m.addrs:
            which.append(f"{addr} IN ({','.join('?' * len(m.addrs))})")
            args += list(m.addrs)
        if m.nets:
            which.append(f"whodid_in_nets({addr}, ?)")
            args.append(",".join(m.nets))
        if m.names and m.direction == "connect":
            which += ["lower(c.rname) GLOB ?"] * len(m.names)
            args += list(m.names)
        if m.addrs or m.nets or m.names:
            # asked by a name that no connection recorded and nothing resolved: nothing matches
            where.append(f"({' OR '.join(which)})" if which else "0")
        if m.port is not None:
            where.append(f"{port} = ?")
            args.append(m.port)
        if m.command is not None:
            pattern, glob = m.command
            test = "x.cmd GLOB ?" if glob else "instr(x.cmd, ?) > 0"
            where.append(f"c.proc IN (SELECT e.proc FROM execs e JOIN cmds x ON x.id = e.cmd_id WHERE {test})")
            args.append(pattern)
        return where, args

    def login(self, login_id: int) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {self.LOGIN_COLS} FROM logins l WHERE l.id = ?", [login_id]).fetchone()
        return self._login(row) if row else None

    def login_from(self, addr: str, port: int, t0: float, t1: float, to: Iterable[str | None] = ()) -> bool:
        """Is there a login whose client was addr:port between t0 and t1 (a connect's exact match)?
        With `to`, only a login to one of those server addresses (or to one not recorded) counts:
        the kernel reuses a client port for connections to other servers at the same time."""
        servers = [a for a in to if a is not None]
        only = f" AND (laddr IS NULL OR laddr IN ({', '.join('?' * len(servers))}))" if servers else ""
        return self.db.execute(f"SELECT 1 FROM logins WHERE raddr = ? AND rport = ? AND ts BETWEEN ? AND ?{only} LIMIT 1",
                               [addr, port, t0, t1, *servers]).fetchone() is not None

    UCONN_READ = ("SELECT u.conn, u.client_proc, u.server_proc, u.listener_proc, u.path, u.bound, u.ts_connect, "
                  "u.ts_accept, coalesce(u.ts_connect, u.ts_accept), p.exit_ts, u.client_uid, u.server_uid, u.client_pid, "
                  "u.listener_pid, u.snapshot "
                  "FROM uconns u LEFT JOIN procs p ON p.id = u.client_proc")
    UCONN_KEYS = ("conn", "client", "server", "listener", "path", "bound", "ts_connect", "ts_accept", "since",
                  "until", "client_uid", "server_uid", "client_pid", "listener_pid", "snapshot")

    def _uconn(self, row) -> dict[str, Any]:
        out = dict(zip(self.UCONN_KEYS, row))
        out["snapshot"] = bool(out["snapshot"])
        return out

    def unix_clients(self, server_proc: int, t0: float, t1: float) -> list[dict[str, Any]]:
        """The unix connections to a server process - accepted by it, or to a socket it listens
        on - open at some time between t0 and t1, earliest first: each client connected to a
        tmux or screen server then, or each ssh client that asked a master for a session. A
        connection lasts from its connect (else its accept) to its client's exit (`until`; None:
        no exit recorded, it may still be open). An accept whose client is not known (no
        uconnect, no peer named) has no end either: it counts only in a window it began in."""
        rows = self.db.execute(
            f"{self.UCONN_READ} WHERE u.id IN (SELECT id FROM uconns WHERE server_proc = ?1 "
            "UNION SELECT id FROM uconns WHERE listener_proc = ?1) "
            "AND coalesce(u.ts_connect, u.ts_accept) <= ?3 AND CASE WHEN u.client_proc IS NULL "
            "THEN coalesce(u.ts_connect, u.ts_accept) >= ?2 ELSE p.exit_ts IS NULL OR p.exit_ts >= ?2 END "
            "ORDER BY coalesce(u.ts_connect, u.ts_accept), u.id", [server_proc, t0, t1])
        return [self._uconn(r) for r in rows]

    def unrecorded_unix_clients(self, server_proc: int, t: float) -> list[float]:
        """When the connections to a server process whose client is not known (an accept with no
        uconnect and no peer named: a lost record, a client the agent does not see) began, up to
        t, earliest first: with no end known, each may still have been open at t."""
        return [r[0] for r in self.db.execute(
            "SELECT coalesce(ts_connect, ts_accept) AS since FROM uconns WHERE client_proc IS NULL "
            "AND id IN (SELECT id FROM uconns WHERE server_proc = ?1 UNION SELECT id FROM uconns WHERE listener_proc = ?1) "
            "AND since <= ?2 ORDER BY since LIMIT 100", [server_proc, t])]

    def unix_conns_of(self, client_proc: int) -> list[dict[str, Any]]:
        """The unix connections a process made (as their client), earliest first."""
        rows = self.db.execute(f"{self.UCONN_READ} WHERE u.client_proc = ? "
                               "ORDER BY coalesce(u.ts_connect, u.ts_accept), u.id", [client_proc])
        return [self._uconn(r) for r in rows]

    def hosts_with_addr(self, addr: str) -> list[int]:
        """Hosts known to own addr: announced in a host event, or seen as a connect's local end."""
        ids = {r[0] for r in self.db.execute(
            "SELECT h.id FROM hosts h, json_each(h.addrs) a WHERE a.value = ?", [addr])}
        ids |= {r[0] for r in self.db.execute(
            "SELECT DISTINCT b.host FROM conns c JOIN procs p ON p.id = c.proc JOIN boots b ON b.id = p.boot "
            "WHERE c.laddr = ? AND c.dir = 'connect' LIMIT 50", [addr])}
        return sorted(ids)

    def host_names(self, host_ids: list[int]) -> list[str]:
        return [r[0] for r in self.db.execute(
            f"SELECT name FROM hosts WHERE id IN ({','.join('?' * len(host_ids))})", host_ids)]

    # --- reading: search -----------------------------------------------------------------

    def search_commands(self, pattern: str, *, glob: bool, since: float | None, until: float | None,
                        host_glob: str | None, limit: int) -> list[tuple[Proc, Image]]:
        """The processes with an exec matching pattern in the window, newest first, each once with
        its newest matching exec: a shim, `env FOO=1 cmd` or a wrapper that execs the real command
        is one process, so one match, and `limit` counts processes."""
        where, args = [], []
        # the distinct command lines first (few), then their execs in the window by (cmd_id, ts)
        test = "cmd GLOB ?" if glob else "instr(cmd, ?) > 0"
        ids = [r[0] for r in self.db.execute(f"SELECT id FROM cmds WHERE {test} LIMIT {MAX_CMD_IDS + 1}", [pattern])]
        if not ids:
            return []
        if len(ids) <= MAX_CMD_IDS:
            where.append(f"e.cmd_id IN ({','.join(map(str, ids))})")
        else:                                   # many command lines (a value or a date in each): the
            where.append(f"e.cmd_id IN (SELECT id FROM cmds WHERE {test})")     # same, as a subquery
            args.append(pattern)
        self._window(where, args, "e.ts", since, until, host_glob)
        if host_glob:
            return self._execs_where(where, args, limit, per_proc=True)
        return self._newest_per_proc(where, args, limit)

    def _newest_per_proc(self, where: list[str], args: list[Any], limit: int) -> list[tuple[Proc, Image]]:
        """_execs_where(per_proc=True) for conditions on execs alone (its command and time), read
        from the index (cmd_id, ts) alone: the newest matches first, doubling how many until
        `limit` processes are found. A common command (sudo, a metrics pusher's aws) has hundreds of
        thousands of execs in a week, and reading each one's row was most of a cold question."""
        k, cond = max(4 * limit, 64), " AND ".join(where)
        while True:
            rows = self.db.execute(f"SELECT e.rowid FROM execs e WHERE {cond} ORDER BY e.ts DESC LIMIT ?",
                                   [*args, k]).fetchall()
            cols = ', '.join('e.' + c.strip() for c in IMAGE_COLS.split(','))
            found = self.db.execute(f"SELECT {cols} FROM execs e WHERE e.rowid IN "
                                    f"({','.join(str(r[0]) for r in rows)})").fetchall() if rows else []
            newest: dict[int, Image] = {}
            for im in sorted(map(_image, found), key=lambda i: i.ts, reverse=True):
                newest.setdefault(im.proc, im)
            if len(newest) >= limit or len(rows) < k:
                break
            k *= 4
        images = list(newest.values())[:limit]
        procs = self.procs({i.proc for i in images})
        return [(procs[i.proc], i) for i in images]

    def execs_of_commands(self, match: Callable[[str], bool], *, since: float, until: float,
                          host_glob: str | None, limit: int) -> list[tuple[Proc, Image]]:
        """Execs in the window whose command line `match` accepts, newest first. The test runs
        once per distinct command line (the cmds table), not once per exec."""
        ids = [cid for cid, cmd in self.db.execute("SELECT id, cmd FROM cmds") if match(cmd)]
        out: list[tuple[Proc, Image]] = []
        for i in range(0, len(ids), MAX_CMD_IDS):
            where = [f"e.cmd_id IN ({','.join(map(str, ids[i:i + MAX_CMD_IDS]))})"]
            args: list[Any] = []
            self._window(where, args, "e.ts", since, until, host_glob)
            out += self._execs_where(where, args, limit)
        out.sort(key=lambda pi: pi[1].ts, reverse=True)
        return out[:limit]

    def _execs_where(self, where: list[str], args: list[Any], limit: int,
                     per_proc: bool = False) -> list[tuple[Proc, Image]]:
        """Execs matching the conditions (on e = execs, p = procs, h = hosts), newest first; with
        per_proc, only each process's newest matching exec. SQLite takes the other columns of an
        aggregate query with a lone MAX() from the row that holds the maximum, so each row is
        that exec as stored (https://sqlite.org/lang_select.html#bareagg)."""
        cols = ', '.join('e.' + c.strip() for c in IMAGE_COLS.split(','))
        group = "GROUP BY e.proc ORDER BY MAX(e.ts) DESC" if per_proc else "ORDER BY e.ts DESC"
        rows = self.db.execute(
            f"SELECT {cols}{', MAX(e.ts)' if per_proc else ''} FROM execs e "
            f"JOIN procs p ON p.id = e.proc JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host "
            f"WHERE {' AND '.join(where)} {group} LIMIT ?", [*args, limit]).fetchall()
        images = [_image(r) for r in rows]
        procs = self.procs({i.proc for i in images})
        return [(procs[i.proc], i) for i in images]

    def search_files(self, path: str, *, glob: bool, since: float | None, until: float | None,
                     host_glob: str | None, limit: int) -> list[tuple[Proc, dict[str, Any]]]:
        op = "GLOB" if glob else "="
        where = [f"(f.path {op} ? OR f.path2 {op} ?)"]
        args: list[Any] = [path, path]
        self._window(where, args, "f.ts", since, until, host_glob)
        rows = self.db.execute(
            "SELECT f.proc, f.ts, f.op, f.path, f.path2, f.mode, f.uid, f.gid, f.euid FROM files f "
            "JOIN procs p ON p.id = f.proc JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host "
            f"WHERE {' AND '.join(where)} ORDER BY f.ts DESC LIMIT ?", [*args, limit]).fetchall()
        changes = [dict(zip(("proc", "ts", "op", "path", "path2", "mode", "uid", "gid", "euid"), r)) for r in rows]
        procs = self.procs({ch["proc"] for ch in changes})
        return [(procs[ch["proc"]], ch) for ch in changes]

    @staticmethod
    def _window(where: list[str], args: list[Any], col: str, since, until, host_glob) -> None:
        if since is not None:
            where.append(f"{col} >= ?")
            args.append(since)
        if until is not None:
            where.append(f"{col} <= ?")
            args.append(until)
        if host_glob:
            where.append("h.name GLOB ?")
            args.append(host_glob)

    def losses(self, hosts: list[str], t0: float, t1: float) -> list[dict[str, Any]]:
        """Known losses on these hosts (by name) whose window overlaps [t0, t1]."""
        if not hosts:
            return []
        rows = self.db.execute(
            f"SELECT h.name, l.since, l.ts, l.count, l.what FROM losses l JOIN hosts h ON h.id = l.host "
            f"WHERE h.name IN ({','.join('?' * len(hosts))}) AND l.since <= ? AND l.ts >= ? ORDER BY l.since",
            [*hosts, t1, t0])
        return [dict(zip(("host", "since", "ts", "count", "what"), r)) for r in rows]

    def agent_runs(self, hosts: list[str], t0: float, t1: float) -> list[Run]:
        """The runs of these hosts' agents (by name) that bound an outage overlapping [t0, t1]:
        those that overlap it, the last to end before it and the first to start after it."""
        out: list[Run] = []
        for name in hosts:
            row = self.db.execute("SELECT id FROM hosts WHERE name = ?", [name]).fetchone()
            if row is None:
                continue
            host = row[0]
            before = self.db.execute("SELECT max(last) FROM agent_runs WHERE host = ? AND last < ?",
                                     [host, t0]).fetchone()[0]
            after = self.db.execute("SELECT min(first) FROM agent_runs WHERE host = ? AND first > ?",
                                    [host, t1]).fetchone()[0]
            rows = self.db.execute(
                "SELECT b.boot, r.run, r.first, r.last, r.stopped FROM agent_runs r JOIN boots b ON b.id = r.boot "
                "WHERE r.host = ? AND r.last >= ? AND r.first <= ? ORDER BY r.first",
                [host, before if before is not None else t0, after if after is not None else t1])
            out += [Run(name, *r) for r in rows]
        return out

    def outages(self, hosts: list[str], t0: float, t1: float) -> list[Outage]:
        """When these hosts' agents (by name) were not running, within [t0, t1] (see outages.py)."""
        return outages_mod.overlapping(outages_mod.outages(self.agent_runs(hosts, t0, t1)), t0, t1)

    # --- fleet: agent tokens, inventory, clocks, pins ---------------------------------------

    def add_agent(self, host: str) -> str:
        """A new token for host (replacing any old one). Only its hash is kept: show it once."""
        token = "wdt_" + secrets.token_urlsafe(32)
        self.db.execute("INSERT OR REPLACE INTO agents (host, token_sha256, created, revoked) VALUES (?, ?, ?, NULL)",
                        [host, _token_hash(token), time.time()])
        return token

    def revoke_agent(self, host: str) -> bool:
        return self.db.execute("UPDATE agents SET revoked = ? WHERE host = ? AND revoked IS NULL",
                               [time.time(), host]).rowcount > 0

    def agents(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT host, created, revoked FROM agents ORDER BY host")
        return [dict(zip(("host", "created", "revoked"), r)) for r in rows]

    def agent_for_token(self, token: str) -> str | None:
        """The host a token belongs to, or None. Tokens are 256-bit random, so looking one up by
        its hash leaks nothing useful through timing."""
        row = self.db.execute("SELECT host FROM agents WHERE token_sha256 = ? AND revoked IS NULL",
                              [_token_hash(token)]).fetchone()
        return row[0] if row else None

    def note_seen(self, host: str, at: float, clock: tuple[float, float] | None = None) -> None:
        """A batch from host arrived at `at` (collector clock); clock = (offset, error) evidence."""
        hid = self._host_id(host)
        if clock is None:
            self.db.execute("UPDATE hosts SET seen_at = ? WHERE id = ?", [at, hid])
        else:
            self.db.execute("UPDATE hosts SET seen_at = ?1, clock_offset = ?2, clock_error = ?3 WHERE id = ?4",
                            [at, clock[0], clock[1], hid])

    def inventory(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT name, first_ts, last_ts, seen_at, clock_offset, clock_error, agent, addrs "
                               "FROM hosts ORDER BY name")
        return [dict(zip(("host", "first_ts", "last_ts", "seen_at", "clock_offset", "clock_error", "agent",
                          "addrs"), r)) for r in rows]

    def clock_offsets(self) -> dict[str, float]:
        """host name -> seconds to add to that host's timestamps to put them on the collector's clock."""
        return dict(self.db.execute("SELECT name, clock_offset FROM hosts WHERE clock_offset IS NOT NULL"))

    def pin(self, procs: Iterable[int], until: float, reason: str) -> None:
        """Keep these processes (and what their traces need) past retention until `until`."""
        with self.transaction():
            self.db.conn.executemany(
                "INSERT INTO pins (proc, reason, until) VALUES (?, ?, ?) "
                "ON CONFLICT (proc, reason) DO UPDATE SET until = max(until, excluded.until)",
                [(p, reason, until) for p in set(procs)])

    def pins(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT reason, count(*), max(until) FROM pins GROUP BY reason ORDER BY reason")
        return [dict(zip(("reason", "procs", "until"), r)) for r in rows]

    def add_rejects(self, host: str, at: float, rows: list[tuple[int, str, str, str]], keep: int = 5000) -> None:
        """Keep refused events (line, field, error, raw) for inspection; only the newest `keep`."""
        if not rows:
            return
        with self.transaction():
            self.db.conn.executemany("INSERT INTO rejects (host, at, line, field, error, raw) VALUES (?, ?, ?, ?, ?, ?)",
                                     [(host, at, *r) for r in rows])
            self.db.execute("DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?", [keep])

    def rejects(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT host, at, line, field, error, raw FROM rejects ORDER BY id DESC LIMIT ?",
                               [limit])
        return [dict(zip(("host", "at", "line", "field", "error", "raw"), r)) for r in rows]

    def log_query(self, at: float, user_id: str | None, user_name: str | None, channel_id: str | None,
                  channel_name: str | None, action: str, text: str | None, outcome: str) -> None:
        self.db.execute("INSERT INTO queries (at, user_id, user_name, channel_id, channel_name, action, text, outcome) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [at, user_id, user_name, channel_id, channel_name, action, text, outcome])

    def queries(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT at, user_id, user_name, channel_id, channel_name, action, text, outcome "
                               "FROM queries ORDER BY id DESC LIMIT ?", [limit])
        return [dict(zip(("at", "user_id", "user_name", "channel_id", "channel_name", "action", "text", "outcome"), r))
                for r in rows]

    CANARY_COLS = ("name", "status", "since", "failures", "last_run", "last_summary", "alert_channel", "alert_ts",
                   "alerted_at", "recovered_at", "undelivered")

    def canary_state(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {', '.join(self.CANARY_COLS)} FROM canaries WHERE name = ?", [name]).fetchone()
        return dict(zip(self.CANARY_COLS, row)) if row else None

    def save_canary_state(self, state: dict[str, Any]) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO canaries ({', '.join(self.CANARY_COLS)}) "
                        f"VALUES ({', '.join('?' * len(self.CANARY_COLS))})", [state.get(c) for c in self.CANARY_COLS])

    def privileged_commands(self, host_globs: list[str], since: float, until: float,
                            limit: int = 10) -> list[tuple[Proc, Image]]:
        """Commands people ran as root on these hosts, newest first: effective uid 0, in the audit
        session of a recorded login (so not cron's or a daemon's, whose sessions no one logged in to)."""
        where = ["e.euid = 0", "e.ses IS NOT NULL", "e.ts >= ?", "e.ts <= ?",
                 "EXISTS (SELECT 1 FROM logins l JOIN procs lp ON lp.id = l.proc WHERE l.ses = e.ses "
                 "AND lp.boot = p.boot)"]
        args: list[Any] = [since, until]
        if host_globs:
            where.append("(" + " OR ".join("h.name GLOB ?" for _ in host_globs) + ")")
            args += host_globs
        return self._execs_where(where, args, limit)

    def prune(self, horizon: float, now: float | None = None, dry_run: bool = False):
        from .retention import prune
        return prune(self, horizon, time.time() if now is None else now, dry_run=dry_run)

    def vacuum(self) -> tuple[int, int]:
        """Give deleted space back to the file system. Returns (bytes before, bytes after)."""
        before = self.size()
        self.checkpoint()
        self.db.execute("VACUUM")
        self.checkpoint()
        return before, self.size()

    def check(self, max_problems: int = 20) -> list[str]:
        """What is wrong with the store, for people; [] when nothing is. SQLite's own integrity
        check (every page and index: minutes on a big store, so questions never do this; at
        most max_problems of its findings), then every row that names a row that is not there:
        the schema declares its references (an exec's process, a process's boot and parent, a
        boot's host...) but does not enforce them, so a write with stale cached ids would go
        unnoticed."""
        problems = [r[0] for r in self.db.execute(f"PRAGMA integrity_check({int(max_problems)})") if r[0] != "ok"]
        broken: dict[tuple[str, str], int] = {}
        for table, _rowid, parent, fk in self.db.execute("PRAGMA foreign_key_check"):
            column = next(r[3] for r in self.db.execute(f"PRAGMA foreign_key_list({table})") if r[0] == fk)
            broken[(f"{table}.{column}", parent)] = broken.get((f"{table}.{column}", parent), 0) + 1
        problems += [f"{n} rows of {where} name a missing {parent} row" for (where, parent), n in broken.items()]
        orphans = self.db.execute("SELECT count(*) FROM users u LEFT JOIN hosts h ON h.id = u.host "
                                  "WHERE h.id IS NULL").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} rows of users.host name a missing hosts row")
        return problems

    def size(self) -> int:
        """Bytes on disk, write-ahead log included."""
        if self.path == ":memory:":
            return 0
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    # --- reading: summary ----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("hosts", "procs", "execs", "creds", "logins", "conns", "files", "losses", "uconns")}

    def time_range(self) -> tuple[float | None, float | None]:
        return tuple(self.db.execute("SELECT min(first_ts), max(last_ts) FROM hosts").fetchone())

    def counts_by_host(self) -> dict[str, dict[str, int]]:
        """host -> kind -> events stored (forks and exits are columns of procs; counted as such)."""
        out: dict[str, dict[str, int]] = {name: {} for (name,) in self.db.execute("SELECT name FROM hosts")}
        per_proc = {
            "exec": "SELECT b.host, count(*) FROM execs x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot GROUP BY 1",
            "fork": "SELECT b.host, count(*) FROM procs p JOIN boots b ON b.id = p.boot WHERE p.fork_ts IS NOT NULL GROUP BY 1",
            "exit": "SELECT b.host, count(*) FROM procs p JOIN boots b ON b.id = p.boot WHERE p.exit_ts IS NOT NULL GROUP BY 1",
            "cred": "SELECT b.host, count(*) FROM creds x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot GROUP BY 1",
            "login": "SELECT b.host, count(*) FROM logins x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot GROUP BY 1",
            "connect": "SELECT b.host, count(*) FROM conns x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot WHERE x.dir = 'connect' GROUP BY 1",
            "accept": "SELECT b.host, count(*) FROM conns x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot WHERE x.dir = 'accept' GROUP BY 1",
            "listen": "SELECT b.host, count(*) FROM conns x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot WHERE x.dir = 'listen' GROUP BY 1",
            "uconnect": "SELECT b.host, count(*) FROM uconns x JOIN boots b ON b.id = x.boot WHERE x.ts_connect IS NOT NULL GROUP BY 1",
            "uaccept": "SELECT b.host, count(*) FROM uconns x JOIN boots b ON b.id = x.boot WHERE x.ts_accept IS NOT NULL GROUP BY 1",
            "file": "SELECT b.host, count(*) FROM files x JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot GROUP BY 1",
            "loss": "SELECT host, count(*) FROM losses GROUP BY 1",
        }
        names = dict(self.db.execute("SELECT id, name FROM hosts"))
        for kind, sql in per_proc.items():
            for host_id, n in self.db.execute(sql):
                out[names[host_id]][kind] = n
        return out

    def lost_by_host(self) -> dict[str, int]:
        """Records each host's agent said it lost (ring buffer overruns, a full spool), ever:
        the loss rows still kept plus those retention pruned (a counter never goes down)."""
        from .retention import lost_pruned
        out = lost_pruned(self)
        for host, n in self.db.execute("SELECT h.name, sum(l.count) FROM losses l JOIN hosts h ON h.id = l.host "
                                       "GROUP BY 1"):
            out[host] = out.get(host, 0) + n
        return out


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; nests as a no-op.

    When a block fails - any statement in it, or the COMMIT itself - `aborted` runs. The store
    passes its _forget_ids: ids cached while the transaction ran may name rows that are not
    there any more, and writing with them stores execs of processes that do not exist and loses
    forks and exits. A full disk usually shows at COMMIT (WAL mode writes its pages then), after
    every statement went well, so this is the one place that sees every failure. A nested
    block that fails calls it too: its caller may catch the error, but SQLite may already have
    rolled the whole transaction back (SQLITE_FULL, SQLITE_IOERR)."""

    def __init__(self, conn: sqlite3.Connection, aborted: Callable[[], None] = lambda: None):
        self.conn = conn
        self.aborted = aborted
        self.outer = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type:
            self.aborted()
            if self.outer:
                self._rollback()
            return False
        if self.outer:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self.aborted()
                self._rollback()
                raise
        return False

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (a full disk, a failed COMMIT): a
        # second ROLLBACK would fail and hide the error that matters
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _split_sql(script: str) -> list[str]:
    # Migration scripts hold no semicolons inside statements, so a plain split is exact.
    out = []
    for part in script.split(";"):
        lines = [ln for ln in part.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if lines:
            out.append("\n".join(lines))
    return out


# --- opening, and SQLite's errors in a person's words -------------------------------------


def _connect(path: str, create: bool) -> tuple[sqlite3.Connection, bool]:
    """(connection, read_only). A new store's file is made private (0600, its directories
    0700) before SQLite opens it: SQLite gives the -wal and -shm files the database file's
    mode. A store on a read-only filesystem (a mounted snapshot or backup) opens read-only."""
    if path == ":memory:":
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False), False
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory; --db wants the store's file name")
    if not os.path.exists(path):
        if not create:
            raise StoreError(
                f"no whodid store at {path}. Build one with `whodid demo --db {path}`, "
                "or point --db / WHODID_DB at an existing store.")
        try:
            private.create_file(path)
        except OSError as exc:
            raise StoreError(private.why_not_written(exc, path, "the store")) from None
    if private.trouble(None, path) == "read-only":
        if create:                  # the caller means to store events
            raise StoreError(f"read-only: the store {path} is on a read-only filesystem; questions can "
                             "read it there, but events cannot be stored in it")
        wal = path + "-wal"
        if not (os.path.exists(wal) and os.path.getsize(wal)):
            # nothing in a write-ahead log to miss, and nothing can write this filesystem: SQLite
            # may read the file as it is, without the -shm it cannot make here
            uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False), True
        raise StoreError(f"read-only: the store {path} is on a read-only filesystem with an unfinished "
                         f"write-ahead log ({wal}) that SQLite must write to read; copy the store and its "
                         "-wal file to a writable place and use the copy")
    return sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False), False


def _code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an error (SQLITE_FULL, SQLITE_CORRUPT...), if it has one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def damaged(path: str, why: str, where: str | None = None) -> StoreError:
    """A damaged store, said the same wherever it is found (a question, `whodid db check`):
    why, that its answers cannot be trusted, and what to do."""
    return StoreError(f"the store {path} is damaged ({why}), so its answers cannot be trusted"
                      + (f" ({where})" if where else "")
                      + "; restore it from a backup, or move it aside and start a new one")


def store_error(exc: BaseException, path: str) -> StoreError:
    """What an SQLite error on the store at path means for a person: opening it, or later, in
    a query or a write. A damaged store is never "not a whodid store", and a full disk or a
    read-only mount is said as such, with the path."""
    code, text = _code(exc), str(exc)
    if code == sqlite3.SQLITE_CORRUPT:
        return damaged(path, text, f"`whodid db check --db {path}` says where")
    if code == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{path} is not a whodid store ({text}). Move it aside, or choose another file "
                          "with --db.")
    why = private.trouble(exc if isinstance(exc, OSError) else None, path) \
        if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
                    None) else None
    if code == sqlite3.SQLITE_FULL or why == "disk full":
        return StoreError(f"disk full: no space left for the store {path} ({text}); free some space on "
                          "its filesystem and run the command again (what failed was not kept; the store "
                          "keeps what it had)")
    if code == sqlite3.SQLITE_READONLY or why == "read-only":
        if why == "read-only":
            where = "its filesystem is mounted read-only"
        elif os.path.exists(path) and not os.access(path, os.W_OK):
            where = f"this user may not write it (mode {os.stat(path).st_mode & 0o777:04o})"
        else:
            where = "this user may not write it or its directory"
        return StoreError(f"read-only: the store {path} cannot be written ({text}): {where}; asking "
                          "questions works, storing events does not")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(f"the store {path} is busy: another process has held its write lock too long "
                          f"({text}); try again, or stop the other writer")
    if code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(f"cannot open the store {path} ({text}): SQLite needs to read it and to make "
                          f"{os.path.basename(path)}-wal and -shm beside it; check this user may do both")
    return StoreError(f"cannot use the store at {path}: {text}")
