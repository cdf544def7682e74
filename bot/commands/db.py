"""`whodid db`: look after the store - stats per host and kind, prune (retention), check every
page for damage, vacuum to give space back."""

from __future__ import annotations

import sqlite3
import sys
import time

from whodid import config as config_mod
from whodid.tracer import Store
from whodid.tracer.render.text import printable
from whodid.tracer.store import damaged
from whodid.tracer.when import clock, format_duration

from . import EXIT_OK, UsageError

def cmd_db(args, cfg: config_mod.Config) -> int:
    path = cfg.store_path(args.db)
    store = Store.open(path)
    if args.action == "prune":
        older = args.older_than or cfg.store.retention
        horizon = config_mod.maybe_duration(older)
        if horizon is None:
            raise UsageError("retention is off (store.retention); say how old with --older-than 30d")
        report = store.prune(time.time() - horizon, dry_run=args.dry_run)
        print(f"{path}: {report.summary()}")
        if not args.dry_run and report.rows_removed:
            print("the file keeps its size until `whodid db vacuum` gives the space back")
        return EXIT_OK
    if args.action == "check":
        return db_check(store, path)
    if args.action == "vacuum":
        print(f"{path}: vacuuming (the store is locked for writing meanwhile; agents keep their spools)...",
              file=sys.stderr, flush=True)
        before, after = store.vacuum()
        print(f"{path}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
        return EXIT_OK
    return db_stats(store, path, cfg)


def db_check(store: Store, path: str) -> int:
    """Read every page of the store. Questions do not (a full check of a big store takes
    minutes); they fail on the damaged pages they read, and this finds the rest."""
    if sys.stderr.isatty():
        print(f"{path}: checking every page ({store.size() / 1e6:.1f} MB)...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    try:
        problems = store.check(20)
    except sqlite3.DatabaseError as exc:       # damage so bad that the check itself stops at it
        raise damaged(path, f"{exc}: the check stopped at it") from None
    if not problems:
        print(f"{path}: ok, no damage found ({time.perf_counter() - t:.1f}s)")
        return EXIT_OK
    for problem in problems:
        print(f"  {problem}")
    raise damaged(path, f"{len(problems)}{'+' if len(problems) == 20 else ''} problems above")


KINDS = ("exec", "fork", "exit", "cred", "login", "connect", "accept", "file", "loss")


def db_stats(store: Store, path: str, cfg: config_mod.Config) -> int:
    now = time.time()
    lo, hi = store.time_range()
    print(f"store: {path} ({store.size() / 1e6:.1f} MB on disk)" if path != ":memory:" else "store: in memory")
    if lo is not None:
        print(f"events from {clock(lo)} to {clock(hi)} ({format_duration(hi - lo)})")
    by_host = store.counts_by_host()
    inventory = {h["host"]: h for h in store.inventory()}
    silent_after = config_mod.parse_duration(cfg.collector.silent_after)
    silent = [h for h, inv in inventory.items() if inv["seen_at"] and now - inv["seen_at"] > silent_after]
    print(printable(f"hosts: {len(by_host)}" + (f" ({len(silent)} silent for over {cfg.collector.silent_after}: "
                                                 f"{', '.join(sorted(silent)[:5])})" if silent else "")))
    width = max([len(h) for h in by_host] + [5])
    print(f"  {'host':<{width}} " + " ".join(f"{k:>8}" for k in KINDS) + "  last event         last batch")
    totals = dict.fromkeys(KINDS, 0)
    for host in sorted(by_host):
        kinds, inv = by_host[host], inventory.get(host, {})
        for k in KINDS:
            totals[k] += kinds.get(k, 0)
        last = clock(inv["last_ts"]) if inv.get("last_ts") else "-"
        seen = ago_text(inv.get("seen_at"), now) if inv.get("seen_at") else "local"
        print(printable(f"  {host:<{width}} ") + " ".join(f"{kinds.get(k, 0):>8,}" for k in KINDS)
              + f"  {last:<18} {seen}")
    print(f"  {'total':<{width}} " + " ".join(f"{totals[k]:>8,}" for k in KINDS))
    rejects = store.rejects(limit=1)
    if rejects:
        r = rejects[0]
        print(printable(f"refused events kept for inspection (newest): {r['host']} line {r['line']}: {r['field']}: "
                        f"{r['error']}"))
    for pin in store.pins():
        print(f"pinned past retention: {pin['procs']} processes for {pin['reason']} until {clock(pin['until'])}")
    return EXIT_OK


def ago_text(ts: float, now: float) -> str:
    return f"{format_duration(now - ts)} ago"
