"""The `whodid` command: the same answers the Slack bot gives, in a terminal.

examples:
  whodid demo                                   build the demo store and ask who deleted the cluster
  whodid trace delete-cluster                   who ran it, through ssh hops and sudo
  whodid trace 'aws*delete*' --since 24h --json
  whodid trace /etc/nginx/nginx.conf            who changed this file
  whodid trace kubectl --user jim --scope 2     jim's kubectl commands, with their sessions
  whodid ingest events.jsonl                    load schema-v1 events (JSON lines; - for stdin)
  whodid import-audit /var/log/audit/audit.log* --host web-1    auditd's logs, as events
  whodid db stats                               what the store holds, per host and kind
  whodid db prune --dry-run                     what retention would remove (store.retention)
  whodid serve                                  the collector (and, later, the Slack bot) in one process
  whodid token add web-1                        a token for web-1's agent (shown once)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
import time

from whodid import __version__
from whodid import config as config_mod
from whodid import private
from whodid.arguments import Parser
from whodid.tracer import Query, Store, StoreError, Tracer, ingest
from whodid.tracer.redact import compile_rules
from whodid.tracer.store import damaged, store_error
from whodid.tracer.render import render_text, traces_json
from whodid.tracer.render.confidence import earlier_refused
from whodid.tracer.render.text import printable, render_trace
from whodid.tracer.when import TimeError, clock, format_duration, parse_time

EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2
MAX_LIMIT = 1000             # matches per question: each is a whole trace, and SQLite's integers end at 2**63


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="whodid", description="Trace commands back to the person who ran them.",
                                epilog=__doc__.split("examples:", 1)[1].join(["examples:", ""]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"whodid {__version__}")
    p.add_argument("--config", metavar="FILE", help="config file (default: $WHODID_CONFIG, "
                   "~/.config/whodid/config.yaml, /etc/whodid/config.yaml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    db_help = "the store's file (default: $WHODID_DB, then store.path in the config)"

    d = sub.add_parser("demo", help="build a demo store from a simulated fleet and trace the cluster deletion")
    d.add_argument("--db", metavar="PATH", help="where to build the demo store (default: in whodid's data directory)")
    d.add_argument("--seed", type=int, default=7, help="seed of the simulated fleet's noise (default: 7)")
    d.add_argument("--live", action="store_true", help="root only: play the story for real on this machine - two "
                   "simulated hosts in their own namespaces, each with a real sshd and a whodid agent on BPF - "
                   "and trace it")

    t = sub.add_parser("trace", help="who ran a command, or changed a file, and how they got there",
                       description="PATTERN is a substring of the command line, a glob if it has * ? or [, "
                                   "or - when it starts with / - a file path (or path glob) whose changes to trace.")
    t.add_argument("pattern", metavar="PATTERN")
    t.add_argument("--db", metavar="PATH", help=db_help)
    t.add_argument("--host", metavar="GLOB", help="only commands on matching hosts")
    t.add_argument("--user", metavar="NAME", help="only chains involving this person, login or effective user")
    t.add_argument("--since", metavar="WHEN", help="start of the window: a duration ago (24h, 7d) or an ISO "
                   "time (default: trace.default_since in the config, 7d)")
    t.add_argument("--until", metavar="WHEN", help="end of the window (default: now)")
    t.add_argument("--scope", type=int, default=0, choices=range(0, 4), metavar="0-3",
                   help="0: the causal chain only; 1: plus what the command started and the other commands "
                        "of the chain's shells; 2: plus the whole login sessions; 3: plus the person's other "
                        "sessions across hosts")
    t.add_argument("--limit", type=int, metavar="N", help="at most N matches, newest first (default: 5)")
    t.add_argument("--json", action="store_true", help="print the documented JSON (docs/trace-json.md)")
    t.add_argument("--started", action="store_true", help="add everything the matched command started "
                   "(Slack's \"Show what it started\")")
    t.add_argument("--earlier", action="store_true", help="also list the person's commands in the day before "
                   "(Slack's \"Earlier activity\")")
    t.add_argument("--keep-for", metavar="DURATION", help="keep what each match's trace needs past the "
                   "retention horizon for this long (an open incident: 90d)")
    t.add_argument("--png", metavar="FILE", help="also draw each match as a PNG: FILE for the first, "
                   "FILE-2.png, FILE-3.png... for the others (docs/images.md)")
    t.add_argument("--html", metavar="FILE", help="also write each match as a self-contained interactive page "
                   "(pan, zoom, click a process for its details) for an incident report: FILE, FILE-2.html...")
    t.add_argument("--link", action="store_true", help="also print each match's signed link to the trace page "
                   "whodid serve serves (web.base_url, valid for web.link_ttl)")

    g = sub.add_parser("changes", help="what was changed, by whom, and was it planned (the config's `changes`)",
                       description="Privileged and change-making commands, and files changed under /etc, in a "
                                   "window: grouped by the person behind them (through hops, sudo and shared "
                                   "accounts), then by host; unplanned first, with why. The same answer as "
                                   "/whodid changes in Slack. See docs/changes.md.")
    g.add_argument("words", nargs="*", metavar="since:WHEN|until:WHEN|host:GLOB|user:NAME",
                   help="the window (default since: changes.since, 24h) and filters, as in Slack")
    g.add_argument("--db", metavar="PATH", help=db_help)
    g.add_argument("--json", action="store_true", help="every change with its attribution and verdict, as JSON")

    i = sub.add_parser("ingest", help="load schema-v1 events from JSON-lines files")
    i.add_argument("files", nargs="+", metavar="FILE", help="JSON lines, one event each; - reads stdin")
    i.add_argument("--db", metavar="PATH", help=db_help)

    a = sub.add_parser("import-audit", help="load auditd logs (files, .gz, or - for stdin) as events",
                       description="Reads raw audit logs (as /var/log/audit/audit.log holds them) into the store: "
                                   "execs, forks, exits, uid changes, connections and sshd logins. Files are read "
                                   "oldest first whatever the order given. See docs/audit.md.")
    a.add_argument("files", nargs="+", metavar="FILE")
    a.add_argument("--host", metavar="NAME", help="the host the log is from (default: this machine's name); records "
                   "with a node= prefix name their own host")
    a.add_argument("--addr", action="append", metavar="IP", help="an address of that host, so ssh hops from it can "
                   "be matched; repeatable")
    a.add_argument("--passwd", metavar="FILE", help="the logged host's passwd file (/etc/passwd format), to name "
                   "its uids where the log does not (auditd's ENRICHED format names them itself); this "
                   "machine's own users are never used")
    a.add_argument("--db", metavar="PATH", help=db_help)

    s = sub.add_parser("db", help="look after the store: stats, prune (retention), vacuum (give space back), "
                       "check (read every page: is it damaged?)")
    s.add_argument("action", choices=["stats", "prune", "vacuum", "check"])
    s.add_argument("--db", metavar="PATH", help=db_help)
    s.add_argument("--older-than", metavar="DURATION", help="prune: the horizon (default: store.retention, 30d)")
    s.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")

    k = sub.add_parser("token", help="agent tokens for the collector: add (or replace), list, revoke")
    k.add_argument("action", choices=["add", "list", "revoke"])
    k.add_argument("host", nargs="?", metavar="HOST", help="the host's name, as its agent reports it")
    k.add_argument("--db", metavar="PATH", help=db_help)

    c = sub.add_parser("canary", help="canaries (the config's `canaries`): list them with their state, or run one "
                       "now and see what its alert would say")
    c.add_argument("action", choices=["list", "run"])
    c.add_argument("name", nargs="?", metavar="NAME")
    c.add_argument("--db", metavar="PATH", help=db_help)

    v = sub.add_parser("serve", help="run the collector (agents ship to POST /v1/events) with retention; "
                       "SIGTERM stops it cleanly")
    v.add_argument("--db", metavar="PATH", help=db_help)
    v.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default: collector.listen, "
                   "127.0.0.1:8470)")
    v.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)     # tests: written once listening
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_ERROR
    cfg = None
    try:
        cfg = config_mod.load(args.config)
        return COMMANDS[args.command](args, cfg)
    except (StoreError, config_mod.ConfigError, UsageError, TimeError, private.PrivateFileError) as exc:
        print(f"whodid: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.Error as exc:
        # a page found damaged in the middle of a question, a disk that filled during a write:
        # never an answer from a store that failed, and never a traceback
        path = cfg.store_path(getattr(args, "db", None)) if cfg else "(no store)"
        print(f"whodid: {store_error(exc, path)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("whodid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        why = private.trouble(exc, exc.filename) if exc.filename else None
        print(f"whodid: {why + ': ' if why else ''}{exc.filename or 'a file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("WHODID_DEBUG"):
            raise
        print(f"whodid: unexpected {type(exc).__name__}: {exc} - a bug in whodid; please report it, with the "
              "traceback WHODID_DEBUG=1 shows", file=sys.stderr)
        return EXIT_ERROR


def cmd_trace(args, cfg: config_mod.Config) -> int:
    now = time.time()
    query = Query(pattern=args.pattern, host=args.host, user=args.user,
                  since=parse_time(args.since or cfg.trace.default_since, now),
                  until=parse_time(args.until, now) if args.until else None,
                  scope=args.scope, limit=args.limit if args.limit is not None else cfg.trace.limit,
                  started=args.started)
    if query.limit < 1:
        raise UsageError(f"--limit must be at least 1 (it counts matches, newest first); got {query.limit}")
    if query.limit > MAX_LIMIT:
        raise UsageError(f"--limit must be at most {MAX_LIMIT} (each match is a whole trace); got {query.limit}")
    keep = config_mod.parse_duration(args.keep_for) if args.keep_for else None
    if keep is not None and keep <= 0:
        raise UsageError(f"--keep-for wants a duration longer than nothing, like 90d; got {args.keep_for!r}")
    store = Store.open(cfg.store_path(args.db))
    tracer = Tracer(store, cfg.identity.identity(), cfg.trace_settings())
    traces = tracer.find(query)
    if keep and traces:
        until = now + keep
        for tr in traces:
            store.pin({d["step"].proc for _, d in tr.graph.nodes(data=True)}, until,
                      f"whodid trace {args.pattern} ({time.strftime('%Y-%m-%d', time.gmtime(now))})")
        print(f"kept past retention until {clock(until)}: what the {len(traces)} trace(s) need",
              file=sys.stderr)
    written = write_images(traces, args.png, now) if args.png and traces else []
    if args.html and traces:
        written += write_pages(store, traces, args.html, now)
    if args.link and traces:
        if not cfg.web.enabled:
            raise UsageError("web.listen is off in the config, so there are no trace pages to link to")
        from .slack.ask import Ask
        from .web.pages import TracePages
        pages = TracePages(cfg, cfg.store_path(args.db))
        ask = Ask(pattern=args.pattern, host=args.host, user=args.user, since=query.since, until=query.until,
                  since_text=args.since or cfg.trace.default_since)
        for i, tr in enumerate(traces):
            print(f"link {i + 1}: {pages.link(ask, i, args.scope, now, tr.target)}",
                  file=sys.stderr if args.json else sys.stdout)
    if args.json:
        json.dump(traces_json(query, traces, now), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_text(query, traces, now))
        if args.earlier:
            for i, tr in enumerate(traces, 1):
                if not tr.attributed.known:      # nobody to look up: say so rather than list an account's
                    print(f"\nMatch {i}: {earlier_refused(tr)}")
                    continue
                steps = tracer.earlier(tr)
                print(f"\nEarlier activity of {printable(tr.attributed.user)} before match {i} (the day before, "
                      "newest last):")
                print("\n".join(printable(f"  {clock(s.start)[:19]}  {s.host:<16} {s.user:<10} {s.command}")
                                 for s in steps) or "  (none)")
    for path in written:
        kind = "page" if path.endswith(".html") else "image"
        print(f"{kind}: {path}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK if traces else EXIT_NO_MATCH


def cmd_changes(args, cfg: config_mod.Config) -> int:
    from whodid.tracer.changes import review

    from . import changes as changes_mod
    from .slack.ask import AskError
    now = time.time()
    try:
        ask = changes_mod.parse(" ".join(args.words), now, cfg.changes.since)
    except AskError as exc:
        raise UsageError(str(exc)) from None
    store = Store.open(cfg.store_path(args.db))
    tracer = Tracer(store, cfg.identity.identity(), cfg.trace_settings())

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r  attributing changes: {done:,} / {total:,}", end="", file=sys.stderr, flush=True)

    result = review(tracer, cfg.changes, ask.since, ask.until, host=ask.host, user=ask.user, progress=progress)
    if sys.stderr.isatty():
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    if args.json:
        json.dump(changes_mod.review_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(changes_mod.render_text(result, now))
    return EXIT_OK


def write_pages(store, traces, path: str, now: float) -> list[str]:
    """One self-contained HTML page per match: path for the first, path-N.html for the N-th."""
    from whodid.tracer.render.html import gather_details, render_html

    stem = path[:-5] if path.lower().endswith(".html") else path
    out = []
    for i, tr in enumerate(traces, 1):
        target = path if i == 1 else f"{stem}-{i}.html"
        try:
            private.write_file(target, render_html(tr, now, gather_details(store, tr)))
        except OSError as exc:
            raise UsageError(private.why_not_written(exc, target, "the page")) from None
        out.append(target)
    return out


def write_images(traces, path: str, now: float) -> list[str]:
    """One PNG per match: path itself for the first, path-N.png for the N-th."""
    from whodid.tracer.render.image import render_png

    stem = path[:-4] if path.lower().endswith(".png") else path
    out = []
    for i, tr in enumerate(traces, 1):
        target = path if i == 1 else f"{stem}-{i}.png"
        try:
            private.write_file(target, render_png(tr, now))
        except OSError as exc:
            raise UsageError(private.why_not_written(exc, target, "the image")) from None
        out.append(target)
    return out


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


KINDS = ("exec", "fork", "exit", "cred", "login", "connect", "accept", "file", "loss")


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


def cmd_token(args, cfg: config_mod.Config) -> int:
    store = Store.open(cfg.store_path(args.db), create=args.action == "add")
    if args.action == "list":
        agents = store.agents()
        if not agents:
            print("no agent tokens; make one with `whodid token add HOST`")
        for a in agents:
            state = f"revoked {clock(a['revoked'])}" if a["revoked"] else "active"
            print(f"  {a['host']:<24} made {clock(a['created'])}  {state}")
        return EXIT_OK
    if not args.host:
        raise UsageError(f"`whodid token {args.action}` needs the host's name")
    if args.action == "revoke":
        if not store.revoke_agent(args.host):
            raise UsageError(f"{args.host} has no active token")
        print(f"{args.host}: token revoked; its agent's batches are refused from now on (within 5 s)")
        return EXIT_OK
    token = store.add_agent(args.host)
    print(token)
    print(f"the token for {args.host}'s agent, shown this once (only its hash is kept). On {args.host}, put it "
          "in a root-only file named by agent.token_file, or in $WHODID_AGENT_TOKEN.", file=sys.stderr)
    return EXIT_OK


def cmd_canary(args, cfg: config_mod.Config) -> int:
    from .canary.alerts import alert_text, State
    from .canary.checks import run
    from .canary.runner import CanaryRunner
    now = time.time()
    path = cfg.store_path(args.db)
    if args.action == "list":
        if not cfg.canaries:
            print("no canaries configured (see `canaries` in config.example.yaml)")
            return EXIT_OK
        store = Store.open(path) if os.path.exists(path) else None
        for c in cfg.canaries:
            st = store.canary_state(c.name) if store else None
            state = "never run" if not st else (
                f"FAILING since {clock(st['since'])}" if st["status"] == "failing" else f"ok (last run {clock(st['last_run'])})")
            print(f"  {c.name:<20} {c.kind:<10} {c.schedule():<18} {c.channel or '-':<14} {state}")
            if st and st.get("last_summary"):
                print(printable(f"  {'':<20} last: {st['last_summary']}"))
            if st and st.get("undelivered"):
                print(f"  {'':<20} not delivered yet (retried by whodid serve): {st['undelivered']}")
        return EXIT_OK
    canary = next((c for c in cfg.canaries if c.name == args.name), None)
    if canary is None:
        names = ", ".join(c.name for c in cfg.canaries) or "none are configured"
        raise UsageError(f"no canary named {args.name!r} (canaries: {names})")
    result = run(canary)
    print(printable(f"{canary.name}: {'ok' if result.ok else 'FAILED'} - {result.summary} "    # a remote's words
                    f"({result.seconds:.1f}s)"))
    if result.ok:
        return EXIT_OK
    store = Store.open(path)
    st = store.canary_state(canary.name)
    state = State(**st) if st else State(name=canary.name)
    state = dataclasses.replace(state, since=state.since or now, failures=state.failures + 1)
    suspects, changes = CanaryRunner(cfg, path, poster=None).suspects(store, canary, state.since)
    print()
    print("Its alert would say (not posted; `whodid serve` runs canaries on their schedule):")
    print(alert_text(canary, state, result, suspects, changes, now))
    if suspects:
        print()
        print(render_trace(suspects[0].trace, now, 1, len(suspects)))
    return EXIT_NO_MATCH


def cmd_serve(args, cfg: config_mod.Config) -> int:
    from .serve import serve
    return serve(cfg, db=args.db, listen=args.listen, ready_file=args.ready_file)


def cmd_demo(args, cfg: config_mod.Config) -> int:
    from .demo.run import cmd_demo as run      # demo-only code lives in its room, loaded when asked for
    return run(args, cfg)


COMMANDS = {"trace": cmd_trace, "ingest": cmd_ingest, "db": cmd_db, "demo": cmd_demo, "token": cmd_token,
            "serve": cmd_serve, "canary": cmd_canary, "import-audit": cmd_import_audit,
            "changes": cmd_changes}

if __name__ == "__main__":
    sys.exit(main())
