"""`whodid canary`: list the configured canaries with their state, or run one now and show the
alert it would post (`whodid serve` runs them on their schedule)."""

from __future__ import annotations

import dataclasses
import os
import time

from whodid import config as config_mod
from whodid.tracer import Store
from whodid.tracer.render.text import printable, render_trace
from whodid.tracer.when import clock

from . import EXIT_NO_MATCH, EXIT_OK, UsageError

def cmd_canary(args, cfg: config_mod.Config) -> int:
    from ..canary.alerts import alert_text, State
    from ..canary.checks import run
    from ..canary.runner import CanaryRunner
    now = time.time()
    path = cfg.store_path(args.db)
    if args.action == "list":
        if not cfg.canaries:
            print("no canaries configured (see `canaries` in `whodid config example`)")
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
