"""The `whodid` command: the same answers the Slack bot gives, in a terminal.

This module only parses the command line and dispatches: argparse reads the options, and the
words of a question (its pattern and its query keys, as `since:3d` or `--since 3d`) go whole to
the query grammar (bot/query.py), the one parser of query keys; each command's implementation lives
in bot/commands/ (serve in bot/serve.py, the demo in bot/demo/run.py).

examples:
  whodid demo                                   build the demo store and ask who deleted the cluster
  whodid trace delete-cluster                   who ran it, through ssh hops and sudo
  whodid trace 'aws*delete*' since:24h --json   query keys as words (since:24h) or flags (--since 24h)
  whodid trace /etc/nginx/nginx.conf            who changed this file
  whodid trace kubectl user:jim scope:2         jim's kubectl commands, with their sessions
  whodid changes since:3d host:'web-*'          what was changed, by whom, planned or not
  whodid ingest events.jsonl                    load schema-v1 events (JSON lines; - for stdin)
  whodid import-audit /var/log/audit/audit.log* --host web-1    auditd's logs, as events
  whodid db stats                               what the store holds, per host and kind
  whodid db prune --dry-run                     what retention would remove (store.retention)
  whodid serve                                  the collector (and, later, the Slack bot) in one process
  whodid token add web-1                        a token for web-1's agent (shown once)
  whodid canary list --config FILE              --config and --db go anywhere on the line
  whodid config check                           every problem of the config file, each at its line
  whodid config example > /etc/whodid/config.yaml   start a config from the documented example
  whodid files                                  the files whodid ships (units, audit rules, manifest)

The query keys (since: until: host: user: scope: limit:) are one language, docs/query.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from whodid import __version__
from whodid import config as config_mod
from whodid import logs, private
from whodid.arguments import Parser
from whodid.tracer import StoreError
from whodid.tracer.store import store_error
from whodid.tracer.when import TimeError

from . import query
from .commands import EXIT_ERROR, EXIT_OK, UsageError
from .commands.canary import cmd_canary
from .commands.changes import cmd_changes
from .commands.config import cmd_config, cmd_files
from .commands.db import cmd_db
from .commands.ingest import cmd_import_audit, cmd_ingest
from .commands.token import cmd_token
from .commands.trace import cmd_trace


QUERY_COMMANDS = {"trace": "trace", "changes": "changes"}      # subcommand -> the grammar's command
CONFIG_HELP = "config file (default: $WHODID_CONFIG, ~/.config/whodid/config.yaml, /etc/whodid/config.yaml)"
DB_HELP = "the store's file (default: $WHODID_DB, then store.path in the config)"


def query_help(command: str) -> str:
    """The query keys of a command, for its --help: from the grammar's registry."""
    return ("query keys - as words (since:3d) or flags (--since 3d, --since=3d), in any order, mixed with the\n"
            "pattern words; words after -- are all pattern (docs/query.md):\n"
            + "\n".join(f"  {line}" for line in query.help_lines(command)))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="whodid", description="Trace commands back to the person who ran them.",
                                epilog=__doc__.split("examples:", 1)[1].join(["examples:", ""]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"whodid {__version__}")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--db", metavar="PATH", help=DB_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    p.subcommands = {}

    def command(name: str, db_help: str = DB_HELP, **kw) -> argparse.ArgumentParser:
        """A subcommand, with the global options: given after it, they win over before it."""
        c = sub.add_parser(name, **kw)
        c.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
        c.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=db_help)
        p.subcommands[name] = c
        return c

    d = command("demo", "where to build the demo store (default: in whodid's data directory)",
                help="build a demo store from a simulated fleet and trace the cluster deletion")
    d.add_argument("--seed", type=int, default=7, help="seed of the simulated fleet's noise (default: 7)")
    d.add_argument("--live", action="store_true", help="root only: play the story for real on this machine - two "
                   "simulated hosts in their own namespaces, each with a real sshd and a whodid agent on BPF - "
                   "and trace it")

    t = command("trace", help="who ran a command, or changed a file, and how they got there",
                description="PATTERN is a substring of the command line, a glob if it has * ? or [, "
                            "or - when it starts with / - a file path (or path glob) whose changes to trace.",
                epilog=query_help("trace") + "\n\nexamples:\n  whodid trace delete-cluster since:3d host:'config-*'\n"
                       "  whodid trace delete-cluster --since 3d --host 'config-*'\n"
                       "  whodid trace -- nginx:latest          a pattern with a colon",
                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    t.add_argument("words", nargs="*", metavar="PATTERN | key:value",
                   help="what to trace, and the query keys below (since: default trace.default_since, 7d; "
                        "limit: default trace.limit, 5)")
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

    g = command("changes", help="what was changed, by whom, and was it planned (the config's `changes`)",
                description="Privileged and change-making commands, and files changed under /etc, in a "
                            "window: grouped by the person behind them (through hops, sudo and shared "
                            "accounts), then by host; unplanned first, with why. The same answer as "
                            "/whodid changes in Slack. See docs/changes.md.",
                epilog=query_help("changes"), formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    g.add_argument("words", nargs="*", metavar="key:value",
                   help="the window (default since: changes.since, 24h) and filters, as in Slack")
    g.add_argument("--json", action="store_true", help="every change with its attribution and verdict, as JSON")

    i = command("ingest", help="load schema-v1 events from JSON-lines files")
    i.add_argument("files", nargs="+", metavar="FILE", help="JSON lines, one event each; - reads stdin")

    a = command("import-audit", help="load auditd logs (files, .gz, or - for stdin) as events",
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

    s = command("db", help="look after the store: stats, prune (retention), vacuum (give space back), "
                       "check (read every page: is it damaged?)")
    s.add_argument("action", choices=["stats", "prune", "vacuum", "check"])
    s.add_argument("--older-than", metavar="DURATION", help="prune: the horizon (default: store.retention, 30d)")
    s.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")

    k = command("token", help="agent tokens for the collector: add (or replace), list, revoke")
    k.add_argument("action", choices=["add", "list", "revoke"])
    k.add_argument("host", nargs="?", metavar="HOST", help="the host's name, as its agent reports it")

    c = command("canary", help="canaries (the config's `canaries`): list them with their state, or run one "
                       "now and see what its alert would say")
    c.add_argument("action", choices=["list", "run"])
    c.add_argument("name", nargs="?", metavar="NAME")

    o = command("config", help="check the config file (every problem, with its line), or print the "
                       "documented example to start one",
                description="check [FILE]: load FILE (default: the config every command reads) and say every "
                            "problem at once, one a line as FILE:LINE: what; exit 2 if any. example: print "
                            "config.example.yaml, every key with a comment.")
    o.add_argument("action", choices=["check", "example"])
    o.add_argument("file", nargs="?", metavar="FILE", help="check: the file (default: --config, $WHODID_CONFIG, "
                   "~/.config/whodid/config.yaml, /etc/whodid/config.yaml)")

    f = command("files", help="the files whodid ships - example config, auditd rules, Slack manifest, systemd "
                       "units: where they are, or one's contents")
    f.add_argument("name", nargs="?", metavar="NAME", help="print this file (like `whodid files audit.rules > "
                   "/etc/audit/rules.d/whodid.rules`)")
    f.add_argument("--path", action="store_true", help="print where NAME is installed instead of its contents")

    v = command("serve", help="run the collector (agents ship to POST /v1/events) with retention; "
                       "SIGTERM stops it cleanly")
    v.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default: collector.listen, "
                   "127.0.0.1:8470)")
    v.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)     # tests: written once listening
    logs.add_arguments(v)
    return p


def split_words(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(what argparse reads, the question's words) for a command that takes a question: its own
    options (--json, --db...) go to argparse; the pattern, key:value words and key flags with
    their values (--since 3d), and everything after --, go to the grammar. Other commands: all
    to argparse."""
    takes_value = {"--config", "--db"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):          # options before the subcommand
        i += 2 if argv[i] in takes_value else 1
    if i >= len(argv) or argv[i] not in QUERY_COMMANDS:
        return argv, []
    own = parser.subcommands[argv[i]]._option_string_actions
    head, words, rest = argv[:i + 1], [], argv[i + 1:]
    j = 0
    while j < len(rest):
        tok = rest[j]
        j += 1
        if tok == "--":
            words += rest[j - 1:]
            break
        key = query.is_flag(tok)
        name = tok.split("=", 1)[0]
        if key is not None:
            words.append(tok)
            if "=" not in tok and key.kind != "bool" and j < len(rest):
                words.append(rest[j])
                j += 1
        elif name in own:
            head.append(tok)
            if "=" not in tok and own[name].nargs != 0 and j < len(rest):
                head.append(rest[j])
                j += 1
        else:
            words.append(tok)
    return head, words


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    head, words = split_words(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(head)
    if args.command in QUERY_COMMANDS:
        args.words = words
        args.options = sorted(parser.subcommands[args.command]._option_string_actions)   # for did-you-mean
    if not args.command:
        parser.print_help()
        return EXIT_ERROR
    cfg = None
    if args.command == "serve":
        logs.setup_for(args)        # a daemon: even a config it cannot read is said in its log's format
    try:
        for name in ("config", "db"):
            if getattr(args, name, None) == "":       # `--db=`: not "not given", which would use the default
                raise UsageError(f"--{name} needs a {'file' if name == 'config' else 'path'}; got an empty "
                                 f"one (--{name}=) - give it, or leave --{name} out for the default")
        # config check reads the file itself, to say every problem; files needs no config
        cfg = config_mod.load(args.config) if args.command not in ("config", "files") else None
        return COMMANDS[args.command](args, cfg)
    except (StoreError, config_mod.ConfigError, UsageError, TimeError, query.QueryError,
            private.PrivateFileError) as exc:
        say_error(args, str(exc))
        return EXIT_ERROR
    except sqlite3.Error as exc:
        # a page found damaged in the middle of a question, a disk that filled during a write:
        # never an answer from a store that failed, and never a traceback
        path = cfg.store_path(getattr(args, "db", None)) if cfg else "(no store)"
        say_error(args, store_error(exc, path))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("whodid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        why = private.trouble(exc, exc.filename) if exc.filename else None
        say_error(args, f"{why + ': ' if why else ''}{exc.filename or 'a file'}: {exc.strerror or exc}")
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("WHODID_DEBUG"):
            raise
        say_error(args, f"unexpected {type(exc).__name__}: {exc} - a bug in whodid; please report it, with the "
                        "traceback WHODID_DEBUG=1 shows")
        return EXIT_ERROR


def say_error(args, text: str) -> None:
    """A command's one-line error; `whodid serve`'s goes to its log, in the format it was asked for."""
    if args.command == "serve":
        logs.get("serve").error(text)
    else:
        print(f"whodid: {text}", file=sys.stderr)


def cmd_serve(args, cfg: config_mod.Config) -> int:
    from .serve import serve
    logs.setup_for(args, cfg.logging)
    return serve(cfg, db=args.db, listen=args.listen, ready_file=args.ready_file)


def cmd_demo(args, cfg: config_mod.Config) -> int:
    from .demo.run import cmd_demo as run      # demo-only code lives in its room, loaded when asked for
    return run(args, cfg)


COMMANDS = {"trace": cmd_trace, "ingest": cmd_ingest, "db": cmd_db, "demo": cmd_demo, "token": cmd_token,
            "serve": cmd_serve, "canary": cmd_canary, "import-audit": cmd_import_audit,
            "changes": cmd_changes, "config": cmd_config, "files": cmd_files}

if __name__ == "__main__":
    sys.exit(main())
