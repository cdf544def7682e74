"""`whodid ingest` and `whodid import-audit`: load events into the store - schema-v1 JSON lines,
or auditd's logs turned into events. Good lines are stored, bad ones listed; nothing good is lost."""

from __future__ import annotations

import os
import sqlite3
import sys
import time

from whodid import config as config_mod
from whodid.tracer import Store, StoreError, ingest
from whodid.tracer.redact import compile_rules
from whodid.tracer.render.text import printable
from whodid.tracer.store import store_error

from . import EXIT_ERROR, EXIT_NO_MATCH, EXIT_OK, UsageError

def cmd_ingest(args, cfg: config_mod.Config) -> int:
    """Each file's good lines are stored and its bad ones listed by line number (exit 1); a
    file that cannot be read, or a store that stops taking writes, is an error (exit 2)."""
    path = cfg.store_path(args.db)
    store = Store.open(path, create=True)
    worst = EXIT_OK
    for name in args.files:
        try:
            fh = sys.stdin if name == "-" else open(name, encoding="utf-8", errors="replace")
        except OSError as exc:
            print(f"whodid: cannot read {name}: {exc.strerror}", file=sys.stderr)
            worst = EXIT_ERROR
            continue
        stored = [0]                     # events of this file in committed batches so far

        def progress(report, stored=stored):
            stored[0] = report.accepted

        try:
            with fh:
                report = ingest(store, fh, progress=progress, rules=compile_rules(cfg.agent.redact_patterns))
        except sqlite3.Error as exc:
            raise StoreError(f"{store_error(exc, path)}. {stored[0]:,} events from {name} were stored before "
                             "it; the same command again stores the rest, none twice") from None
        except UnicodeDecodeError as exc:      # only stdin: files are read with errors="replace"
            raise UsageError(f"{name}: not text ({exc.reason}); whodid ingest reads UTF-8 JSON lines") from None
        print(printable(f"{name}: {report.summary()}"))
        for sample in report.samples:           # for a file, event N is its line N
            print(printable(f"  refused {sample} (line {sample.position} of {name})"))
        if report.rejected > len(report.samples):
            print(f"  ... and {report.rejected - len(report.samples)} more refused lines")
        if report.rejected:
            worst = max(worst, EXIT_NO_MATCH)
    return worst


def cmd_import_audit(args, cfg: config_mod.Config) -> int:
    import gzip
    import itertools
    import socket

    from whodid.agent.audit import ImportReport, import_lines, passwd_names

    host = args.host or socket.gethostname()
    passwd = None
    if args.passwd:
        try:
            with open(args.passwd, errors="replace") as fh:
                passwd = passwd_names(fh.read(), args.passwd)
        except OSError as exc:
            raise UsageError(f"cannot read --passwd {args.passwd}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def first_ts(name: str) -> float:
        if name == "-":
            return float("inf")
        try:
            for line in open_log(name):
                m = line.find("msg=audit(")
                if m >= 0:
                    return float(line[m + 10:].split(":", 1)[0])
        except (OSError, ValueError):
            pass
        return 0.0

    def open_log(name: str):
        if name == "-":
            return sys.stdin
        with open(name, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        return gzip.open(name, "rt", errors="replace") if gz else open(name, errors="replace")

    for name in args.files:
        if name != "-" and not os.path.isfile(name):
            raise UsageError(f"cannot read {name}: {'not a file' if os.path.exists(name) else 'no such file'}")
    files = sorted(args.files, key=first_ts)          # rotated logs: oldest first, one process table
    report = ImportReport()

    def lines():
        for name in files:
            try:
                with open_log(name) as fh:
                    yield from fh
            except (OSError, EOFError) as exc:
                print(f"whodid: {name}: stopped reading: {exc}", file=sys.stderr)

    def progress(rep):
        if sys.stderr.isatty():
            print(f"\r  {report.lines:,} lines read, {rep.accepted:,} events stored", end="", file=sys.stderr, flush=True)

    store = Store.open(cfg.store_path(args.db), create=True)
    t = time.perf_counter()
    events = import_lines(lines(), host, report, rules=compile_rules(cfg.agent.redact_patterns), passwd=passwd)
    if args.addr:
        hello = {"v": 1, "kind": "host", "host": host, "boot": f"audit:{host}", "ts": time.time(), "addrs": args.addr,
                 "agent": "whodid import-audit"}
        events = itertools.chain([hello], events)
    ingested = ingest(store, events, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{', '.join(files)} -> {cfg.store_path(args.db)} ({time.perf_counter() - t:.1f}s)")
    print(report.summary())
    if ingested.rejected:
        print(f"{ingested.rejected} events refused by the store: {ingested.samples[0]}")
    return EXIT_OK if report.lines else EXIT_NO_MATCH
