"""`whodid changes`: what was changed, by whom, and was it planned (the config's `changes`);
the same review the Slack digest posts."""

from __future__ import annotations

import json
import sys
import time

from whodid import config as config_mod
from whodid.tracer import Store

from . import EXIT_OK
from ..tracing import tracer_for

def cmd_changes(args, cfg: config_mod.Config) -> int:
    from whodid.tracer.changes import review

    from .. import changes as changes_mod
    from .. import query
    now = time.time()
    # since:3d or --since 3d: the grammar's (bot/query.py), as in Slack
    ask = changes_mod.from_question(query.parse(args.words, "changes", now, {"since": cfg.changes.since},
                                                   options=getattr(args, "options", ())), now)
    store = Store.open(cfg.store_path(args.db))
    tracer = tracer_for(cfg, store)

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
