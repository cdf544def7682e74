"""`whodid trace`: who ran a command or changed a file, and how they got there; the answer
as text, JSON, PNG or HTML pages, with links to the trace pages when the web server is on."""

from __future__ import annotations

import json
import sys
import time

from whodid import config as config_mod
from whodid import private
from whodid.tracer import Query, Store
from whodid.tracer.render import render_text, traces_json
from whodid.tracer.render.confidence import earlier_refused
from whodid.tracer.render.text import printable
from whodid.tracer.when import clock

from .. import query as grammar
from . import EXIT_NO_MATCH, EXIT_OK, UsageError
from ..tracing import tracer_for


def cmd_trace(args, cfg: config_mod.Config) -> int:
    now = time.time()
    # the pattern and the query keys (since:3d or --since 3d) are the grammar's: bot/query.py
    q = grammar.parse(args.words, "trace", now, {"since": cfg.trace.default_since, "limit": str(cfg.trace.limit),
                                                 "scope": "0"},
                      options=getattr(args, "options", ()))
    query = Query(pattern=q.pattern, host=q.host, user=q.user, since=q.since, until=q.until, scope=q.scope,
                  limit=q.limit, started=args.started, to=q.to, from_=q.from_, listen=q.listen)
    keep = config_mod.parse_duration(args.keep_for) if args.keep_for else None
    if keep is not None and keep <= 0:
        raise UsageError(f"--keep-for wants a duration longer than nothing, like 90d; got {args.keep_for!r}")
    store = Store.open(cfg.store_path(args.db))
    tracer = tracer_for(cfg, store)
    traces = tracer.find(query)
    if keep and traces:
        until = now + keep
        for tr in traces:
            store.pin({d["step"].proc for _, d in tr.graph.nodes(data=True)}, until,
                      f"whodid trace {grammar.format(q)} ({time.strftime('%Y-%m-%d', time.gmtime(now))})")
        print(f"kept past retention until {clock(until)}: what the {len(traces)} trace(s) need",
              file=sys.stderr)
    written = write_images(traces, args.png, now) if args.png and traces else []
    if args.html and traces:
        written += write_pages(store, traces, args.html, now)
    if args.link and traces:
        if not cfg.web.enabled:
            raise UsageError("web.listen is off in the config, so there are no trace pages to link to")
        from ..slack.ask import Ask
        from ..web.pages import TracePages
        pages = TracePages(cfg, cfg.store_path(args.db))
        ask = Ask(pattern=q.pattern, host=q.host, user=q.user, since=q.since, until=q.until,
                  since_text=q.texts["since"], to=q.texts.get("to"), from_=q.texts.get("from"), listen=q.listen)
        for i, tr in enumerate(traces):
            print(f"link {i + 1}: {pages.link(ask, i, q.scope, now, tr.target)}",
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
