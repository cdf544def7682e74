"""Retention: forget what happened before a horizon, except what a trace still needs.

A process is kept when it did anything after the horizon, may still be running (no exit on
its host's latest boot), or is pinned by an open incident - and then so is everything its
trace walks through: its ancestors, the ssh client on the other host behind each of their
logins (exact 4-tuple or, as the trace would infer, the address and port within an hour),
and the login of their audit session. That closure is why a shell opened 40 days ago, whose
child ran `delete-cluster` yesterday, survives a 30-day horizon.

Unix connections (uconns, issue 19) join the closure both ways: a kept client keeps the server
and listener it connected to (the tmux session it attached to, the ssh master it asked), and a
kept child of a server (a tmux pane's shell) keeps the clients connected while it ran - who was
attached when a kept command was typed. A connection goes with its client (its end is the
client's exit: without it the connection would seem open for ever), or, when no client is
known, once none of its processes is kept.

Loss records before the horizon go too, but their counts are first added to a running total
per host (meta `lost_pruned`), because `whodid_agent_lost_events_total` is a counter: what
agents said they lost must never be seen to shrink.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

HOP_SLACK = 3600.0          # wider than any sensible trace.hop_window: keeping too much is safe

SEED = [
    # may still be running: no exit, on the newest boot its host reported
    "INSERT OR IGNORE INTO temp.keep SELECT id FROM procs WHERE exit_ts IS NULL "
    "AND boot IN (SELECT max(id) FROM boots GROUP BY host)",
    "INSERT OR IGNORE INTO temp.keep SELECT id FROM procs WHERE exit_ts >= :h OR fork_ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM execs WHERE ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM creds WHERE ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM logins WHERE ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM conns WHERE ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM files WHERE ts >= :h",
    "INSERT OR IGNORE INTO temp.keep SELECT proc FROM pins WHERE until > :now",
    # a unix connection made or accepted since: both its ends (the procs named in it)
    "INSERT OR IGNORE INTO temp.keep SELECT p FROM (SELECT client_proc p, ts_connect t1, ts_accept t2 FROM uconns "
    "UNION ALL SELECT server_proc, ts_connect, ts_accept FROM uconns "
    "UNION ALL SELECT listener_proc, ts_connect, ts_accept FROM uconns) WHERE p IS NOT NULL AND (t1 >= :h OR t2 >= :h)",
]

CLOSE = [
    # ancestors on the same host
    "INSERT OR IGNORE INTO temp.keep WITH RECURSIVE up(id) AS ("
    " SELECT p.parent FROM procs p JOIN temp.keep k ON k.id = p.id WHERE p.parent IS NOT NULL"
    " UNION SELECT p.parent FROM procs p JOIN up ON p.id = up.id WHERE p.parent IS NOT NULL)"
    " SELECT id FROM up",
    # the client of each kept login: the connect whose local end is the login's remote end
    "INSERT OR IGNORE INTO temp.keep SELECT c.proc FROM logins l JOIN temp.keep k ON k.id = l.proc "
    "JOIN conns c ON c.dir = 'connect' AND c.lport = l.rport AND c.laddr = l.raddr",
    # ... or, behind NAT, a connect to the login's own address and port around its time
    "INSERT OR IGNORE INTO temp.keep SELECT c.proc FROM logins l JOIN temp.keep k ON k.id = l.proc "
    "JOIN conns c ON c.dir = 'connect' AND c.raddr = l.laddr AND c.rport = l.lport "
    f"AND c.ts BETWEEN l.ts - {HOP_SLACK} AND l.ts + {HOP_SLACK}",
    # the server and listener of a kept client's unix connections: the tmux or screen session it
    # attached to, the ssh master it asked for a session (and, by the ancestors rule, their chains)
    "INSERT OR IGNORE INTO temp.keep SELECT s FROM (SELECT u.server_proc s FROM uconns u JOIN temp.keep k "
    "ON k.id = u.client_proc UNION ALL SELECT u.listener_proc FROM uconns u JOIN temp.keep k ON k.id = u.client_proc) "
    "WHERE s IS NOT NULL",
    # the clients connected to a kept server while a kept child of it ran (a tmux pane's shell):
    # who was attached when a kept command ran in the session
    "INSERT OR IGNORE INTO temp.keep SELECT u.client_proc FROM uconns u JOIN procs ch "
    "ON ch.parent IN (u.server_proc, u.listener_proc) JOIN temp.keep k ON k.id = ch.id "
    "LEFT JOIN procs cl ON cl.id = u.client_proc WHERE u.client_proc IS NOT NULL "
    "AND coalesce(ch.fork_ts, -1e300) <= coalesce(cl.exit_ts, 1e300) "
    "AND coalesce(ch.exit_ts, 1e300) >= coalesce(u.ts_connect, u.ts_accept)",
    # the login of a kept process's audit session, when its parent chain was not recorded
    "INSERT OR IGNORE INTO temp.keep SELECT l.proc FROM execs e JOIN temp.keep k ON k.id = e.proc "
    "JOIN procs ep ON ep.id = e.proc JOIN logins l ON l.ses = e.ses JOIN procs lp ON lp.id = l.proc "
    "AND lp.boot = ep.boot WHERE e.ses IS NOT NULL",
]

TABLES = ("execs", "creds", "logins", "conns", "files")


@dataclass
class PruneReport:
    horizon: float
    procs_kept: int = 0
    procs_removed: int = 0
    rows_removed: int = 0            # execs, creds, logins, conns, files, uconns and losses
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {self.procs_removed} processes and {self.rows_removed} events from before the horizon; "
                f"kept {self.procs_kept} processes (active since, still running, pinned, or needed by their traces)")


def prune(store, horizon: float, now: float, dry_run: bool = False) -> PruneReport:
    db = store.db.conn
    report = PruneReport(horizon=horizon, dry_run=dry_run)
    args = {"h": horizon, "now": now}
    with store.transaction():
        db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.keep")
        for sql in SEED:
            db.execute(sql, args)
        size = -1
        while size != (size := db.execute("SELECT count(*) FROM temp.keep").fetchone()[0]):
            for sql in CLOSE:
                db.execute(sql)
        report.procs_kept = size
        total = db.execute("SELECT count(*) FROM procs").fetchone()[0]
        report.procs_removed = total - db.execute(
            "SELECT count(*) FROM procs WHERE id IN (SELECT id FROM temp.keep)").fetchone()[0]
        if dry_run:
            for table in TABLES:
                report.rows_removed += db.execute(
                    f"SELECT count(*) FROM {table} WHERE proc NOT IN (SELECT id FROM temp.keep)").fetchone()[0]
            report.rows_removed += db.execute("SELECT count(*) FROM losses WHERE ts < ?", [horizon]).fetchone()[0]
            report.rows_removed += db.execute(f"SELECT count(*) FROM uconns WHERE {UCONN_GONE}").fetchone()[0]
        else:
            for table in TABLES:
                report.rows_removed += db.execute(
                    f"DELETE FROM {table} WHERE proc NOT IN (SELECT id FROM temp.keep)").rowcount
            report.rows_removed += _prune_uconns(db)
            _keep_lost_counts(store, horizon)
            report.rows_removed += db.execute("DELETE FROM losses WHERE ts < ?", [horizon]).rowcount
            _prune_runs(db, horizon)
            db.execute("DELETE FROM procs WHERE id NOT IN (SELECT id FROM temp.keep)")
            db.execute("DELETE FROM pins WHERE until <= ?", [now])
            db.execute("UPDATE hosts SET first_ts = max(first_ts, ?) WHERE first_ts < ?", [horizon, horizon])
            gen = int(store.get_meta("prune_generation") or 0) + 1
            store.set_meta("prune_generation", str(gen))
        db.execute("DELETE FROM temp.keep")
    if not dry_run:
        store._check_generation()
    return report


# a unix connection none of whose processes is kept, or whose client is not: a connection lasts
# as long as its client, so without the client it would seem open for ever
UCONN_GONE = ("client_proc NOT IN (SELECT id FROM temp.keep) OR " +
              " AND ".join(f"coalesce({col} NOT IN (SELECT id FROM temp.keep), 1)"
                           for col in ("client_proc", "server_proc", "listener_proc")))


def _prune_uconns(db) -> int:
    """Unix connections go with their client, or with all their processes when no client is
    known. A kept client keeps its server and listener (CLOSE), so a kept row loses at most the
    listener of an accept whose client was never named: that column then names nothing."""
    removed = db.execute(f"DELETE FROM uconns WHERE {UCONN_GONE}").rowcount
    for col in ("server_proc", "listener_proc"):
        db.execute(f"UPDATE uconns SET {col} = NULL WHERE {col} NOT IN (SELECT id FROM temp.keep)")
    return removed


def _prune_runs(db, horizon: float) -> None:
    """Agent runs that ended before anything kept on their host began (and before the horizon),
    but each host's last of those: it begins the outage, if any, that a kept chain may cross.
    A trace kept past the horizon still says when its host's agent was down."""
    kept_since = dict(db.execute(
        "SELECT b.host, min(coalesce(p.fork_ts, (SELECT min(ts) FROM execs e WHERE e.proc = p.id), ?1)) "
        "FROM procs p JOIN boots b ON b.id = p.boot WHERE p.id IN (SELECT id FROM temp.keep) GROUP BY b.host",
        [horizon]).fetchall())
    for (host,) in db.execute("SELECT DISTINCT host FROM agent_runs").fetchall():
        cut = min(horizon, kept_since.get(host, horizon))
        db.execute("DELETE FROM agent_runs WHERE host = ?1 AND last < ?2 AND EXISTS (SELECT 1 FROM agent_runs later "
                   "WHERE later.host = ?1 AND later.last > agent_runs.last AND later.last < ?2)", [host, cut])


LOST_PRUNED = "lost_pruned"       # meta key: {host name: records lost, from loss rows since pruned}


def lost_pruned(store) -> dict[str, int]:
    """Per host, the records lost according to loss rows that retention has since deleted."""
    return json.loads(store.get_meta(LOST_PRUNED) or "{}")


def _keep_lost_counts(store, horizon: float) -> None:
    """Add the counts of the loss rows about to be pruned to the running totals (same transaction)."""
    rows = store.db.execute("SELECT h.name, sum(l.count) FROM losses l JOIN hosts h ON h.id = l.host "
                            "WHERE l.ts < ? GROUP BY 1", [horizon]).fetchall()
    if not rows:
        return
    totals = lost_pruned(store)
    for host, n in rows:
        totals[host] = totals.get(host, 0) + n
    store.set_meta(LOST_PRUNED, json.dumps(totals, sort_keys=True))
