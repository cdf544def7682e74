"""`whodid token`: the collector's agent tokens - add (shown once, only its hash kept), list,
revoke."""

from __future__ import annotations

import sys

from whodid import config as config_mod
from whodid.tracer import Store
from whodid.tracer.when import clock

from . import EXIT_OK, UsageError

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
