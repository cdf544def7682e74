"""The `--json` contract (docs/trace-json.md): stable field names, documented, versioned."""

from __future__ import annotations

from typing import Any

from ..sharing import SharedSession
from ..stitch import Attribution, Step
from ..trace import Query, Trace, whole_ms
from ..when import iso
from .confidence import candidate_person
from .shared import person_or_none

TRACE_SCHEMA = "whodid.trace/2"


def _step(step: Step) -> dict[str, Any]:
    out = {
        "host": step.host, "pid": step.pid, "user": step.user, "login_user": step.login_user,
        "command": step.command, "argv": step.argv, "start": iso(step.start), "start_ts": step.start,
        "edge": step.edge, "inferred": step.inferred, "note": step.note,
        "cwd": step.cwd, "exe": step.exe, "tty": step.tty, "container": step.container,
        "pidns": step.pidns,
    }
    if step.login:
        lg = step.login
        out["login"] = {"user": lg["user"], "method": lg.get("method"), "key_fp": lg.get("key_fp"),
                        "source": lg.get("raddr"), "source_port": lg.get("rport"),
                        "time": iso(lg["ts"])}
    return out


def trace_json(tr: Trace) -> dict[str, Any]:
    who = tr.attributed
    poi = _step(tr.poi)
    poi["exit_code"] = tr.exit_code
    poi["change"] = None if tr.change is None else {
        "op": tr.change["op"], "path": tr.change["path"], "path2": tr.change.get("path2"),
        "time": iso(tr.change["ts"])}
    nodes = []
    for node, data in tr.graph.nodes(data=True):
        s: Step = data["step"]
        nodes.append({"id": node, "host": s.host, "pid": s.pid, "user": s.user, "command": s.command,
                      "start": iso(s.start), "role": data["role"]})
    edges = [{"from": a, "to": b, "kind": d["kind"], "inferred": d["inferred"], "note": d["note"],
              "chain": d["chain"]} for a, b, d in tr.graph.edges(data=True)]
    return {
        "summary": tr.summary,
        "poi": poi,
        "attributed_to": {"user": who.user if who.known else None, "host": who.host, "source": who.source,
                          "login_time": iso(who.login_time) if who.login_time else None,
                          "how": who.how, "account": who.account, "key_fp": who.key_fp},
        "confidence": who.confidence,
        "candidates": [{"person": candidate_person(c), "account": c.account, "host": c.host,
                        "login_time": iso(c.login_time), "source": c.source, "key_fp": c.key_fp,
                        "evidence": c.evidence} for c in (who.candidates if not who.known else [])],
        "chain": [_step(s) for s in tr.chain],
        "execs": [{"command": im.cmd, "argv": im.argv, "exe": im.exe, "start": iso(im.ts), "start_ts": im.ts,
                   "poi": tr.change is None and tr.target is not None and (
                       im.ts == tr.poi.start if tr.connections else im.ts == tr.target.at)}
                  for im in tr.execs],
        "gaps": tr.gaps,
        "notes": tr.notes,
        "scope": tr.scope,
        "graph": {"nodes": nodes, "edges": edges},
        "truncated": tr.truncated,
        "shared_sessions": [shared_json(ss) for ss in tr.shared],
        "connections": connections_json(tr),
    }


def connections_json(tr: Trace) -> dict[str, Any] | None:
    """A connection match's connections (docs/trace-json.md, "connections"); null otherwise."""
    c = tr.connections
    if c is None:
        return None
    lg = c.login
    return {
        "direction": c.direction, "asked": c.asked, "count": c.count,
        "first": iso(c.first), "last": iso(c.last), "first_ts": c.first, "last_ts": c.last,
        "peers": [{"addr": p.addr, "port": p.port, "name": p.name, "count": p.count, "first": iso(p.first),
                   "last": iso(p.last), "first_ts": p.first, "last_ts": p.last} for p in c.peers],
        "login": None if lg is None else {"user": lg["user"], "method": lg.get("method"), "key_fp": lg.get("key_fp"),
                                          "source": lg.get("raddr"), "source_port": lg.get("rport"),
                                          "time": iso(lg["ts"])},
        "how": c.how,
    }


def shared_json(ss: SharedSession) -> dict[str, Any]:
    """A multiplexer server or ssh master on the chain (tracer/sharing.py): who started it and who
    used it, each `person` null when the evidence names nobody (the confidence contract)."""
    return {
        "kind": ss.kind, "host": ss.host, "pid": ss.pid, "path": ss.path, "step": ss.step, "note": ss.note,
        "started_by": _who(ss.starter),
        "clients": [{"role": c.role, "host": c.host, "pid": c.pid, "command": c.command,
                     "since": iso(c.since) if c.since is not None else None,
                     "until": iso(c.until) if c.until is not None else None,
                     **_who(c.who), "summary": c.summary} for c in ss.clients],
    }


def _who(who: Attribution) -> dict[str, Any]:
    return {"person": person_or_none(who), "confidence": who.confidence, "account": who.account}


def traces_json(query: Query, traces: list[Trace], now: float) -> dict[str, Any]:
    return {
        "schema": TRACE_SCHEMA,
        "generated_at": iso(now),
        "query": {"pattern": query.pattern, "host": query.host, "user": query.user,
                  "since": iso(query.since) if query.since else None,
                  "until": iso(query.until) if query.until else None,
                  "scope": query.scope, "limit": query.limit,
                  "to": query.to.text if query.to else None, "from": query.from_.text if query.from_ else None,
                  "listen": query.listen},
        "matches": [trace_json(t) for t in traces],
        # a user: search that stopped before the oldest match: how many it traced and the time of
        # the oldest of them (older ones may involve the user too); null when every match was
        # looked at
        "looked_at": getattr(traces, "looked_at", None),
        # rounded up, as the CLI and Slack suggest it: until: that time takes in every match not looked at
        "looked_to": whole_ms(traces.looked_to, True) if getattr(traces, "looked_at", None) else None,
    }
