"""The plain-text answer: what the CLI prints, and what the bot posts for screen readers.

Everything shown comes from hosts, and a host can record anything: a command line with an
escape sequence that clears the screen or rewrites the line above, a carriage return that
hides what follows, a right-to-left override that shows `rm` as `mr`. `printable` is the one
function that makes recorded data safe to show - every line printed here goes through it, and
so do the CLI's other prints of recorded data and the Slack blocks (bot/slack/blocks.escape).
"""

from __future__ import annotations

import re

from ..destinations import endpoint
from ..trace import Query, Trace, further_back
from . import shared
from .confidence import candidate_head, confidence, person, reason
from ..when import ago, clock, format_span

EDGE_LABEL = {"login": "login", "fork": "fork", "exec": "exec", "ssh": "ssh ->", "sudo": "sudo",
              "su": "su", "setuid": "setuid"}
MAX_CLIENT_LINES = 12      # clients listed under a shared session; the JSON and the page list every one


# C0 controls (newline apart), DEL, C1 controls (8-bit ESC/CSI among them), and the bidi
# controls that reorder what follows them; U+2028/9 are line breaks to some terminals
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}


def printable(text: str, keep_newlines: bool = False) -> str:
    """Recorded data shown as text: control and bidi characters become visible escapes (ESC as
    \\x1b, U+202E as \\u202e), so what is printed is what was recorded and nothing more. A
    newline too, unless the text is known to be lines (keep_newlines)."""
    def visible(m: re.Match) -> str:
        ch = m.group()
        return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    text = _UNSAFE.sub(visible, text)
    return text if keep_newlines else text.replace("\n", "\\n")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_trace(tr: Trace, now: float, index: int = 1, total: int = 1) -> str:
    poi, who = tr.poi, tr.attributed
    lines = []
    what = poi.command
    if tr.change:
        ch = tr.change
        target = f"{ch['path']} -> {ch['path2']}" if ch.get("path2") else ch["path"]
        what = f"{ch['op']} {target} (by `{poi.command}`)"
        when = ch["ts"]
    else:
        when = poi.start
    lines.append(f"Match {index} of {total}: {what}")
    lines.append(f"  on {poi.host}, pid {poi.pid}, as {poi.user}, {clock(when)} ({ago(when, now)})"
                 + (f", exit code {tr.exit_code}" if tr.exit_code is not None else ""))
    if len(tr.execs) > 1:
        lines.append("  exec'd as: " + " -> ".join(_short(im.cmd, 60) for im in tr.execs))
    lines.extend(f"  {line}" for line in connection_lines(tr))
    lines.append("")
    lines.append(f"Who:  {person(who)} - {who.how}")
    if who.login_time is not None:
        # unknown: the login is the account's, not a person's, and says so
        whose = "" if who.known else f"{who.account or 'the account'} "
        lines.append(f"      {whose}logged in to {who.host} from {who.source or 'an unknown address'} at "
                     f"{clock(who.login_time)}")
    lines.append(f"Confidence: {confidence(tr)} - {reason(tr)}")
    lines.append(f"How:  {tr.summary}")
    lines.extend(candidate_lines(tr))
    lines.append("")
    hw = max(len(s.host) for s in tr.chain)
    uw = max(len(s.user) for s in tr.chain)
    gap_before = {g["before"]: g for g in tr.gaps}
    for i, s in enumerate(tr.chain):
        if i in gap_before:
            lines.append(f"  {'':19}  ... {gap_before[i]['label']}")
        marker = "  <== matched" if i == len(tr.chain) - 1 else ""
        edge = EDGE_LABEL.get(s.edge, s.edge) + ("?" if s.inferred else "")
        t = clock(s.start)[:19]
        lines.append(f"  {t}  {s.host:<{hw}}  {edge:<7} {s.user:<{uw}}  {_short(s.command, 70)}{marker}")
        if s.note:
            lines.append(f"  {'':19}  {'':<{hw}}  {'':7} {'':<{uw}}  ({s.note})")
    lines.extend(shared_lines(tr))
    if tr.notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"  - {c}" for c in tr.notes)
    if tr.scope:
        extra = tr.graph.number_of_nodes() - len(tr.chain)
        lines.append("")
        lines.append(f"Scope {tr.scope}: {extra} more processes around the chain (see --json or --png)")
        lines.extend(f"  - {t}" for t in tr.truncated)
    return "\n".join(printable(line) for line in lines)


def peer_line(direction: str, p) -> str:
    """One end of a connection match in a line: `connected to 10.0.5.10:6443 (eks-prod) 300
    times, first 10:02:11, last 10:04:40`."""
    name = f" ({p.name})" if p.name else ""
    said = {"connect": f"connected to {endpoint(p.addr, p.port)}{name}",
            "accept": f"came in from {p.addr} to port {p.port}",
            "listen": f"listened on {endpoint(p.addr, p.port)}"}[direction]
    times = "once" if p.count == 1 else f"{p.count} times"
    when = f"at {clock(p.first)}" if p.count == 1 else f"first {clock(p.first)}, last {clock(p.last)}"
    return f"{said} {times}, {when}"


def connection_lines(tr: Trace) -> list[str]:
    """A connection match's connections, one line per other end (most used first), then the
    login an accepted connection carried and how an asked name became addresses."""
    c = tr.connections
    if c is None:
        return []
    lines = [peer_line(c.direction, p) for p in c.peers]
    shown = sum(p.count for p in c.peers)
    if shown < c.count:
        lines.append(f"... and {c.count - shown} more connections to other ends (--json lists the first 20)")
    if c.login:
        lg = c.login
        lines.append(f"carried the ssh login as {lg['user']} ({lg.get('method') or 'login'}) at {clock(lg['ts'])}")
    lines.extend(f"({h})" for h in c.how)
    return lines


def candidate_lines(tr: Trace) -> list[str]:
    """The candidates block of an unknown answer: one line per candidate, then its evidence."""
    cands = tr.attributed.candidates if not tr.attributed.known else []
    if not cands:
        return []
    lines = ["", "Candidates (the person is unknown; logins this process's own evidence points at):"]
    for i, c in enumerate(cands, 1):
        lines.append(f"  {i}. {candidate_head(c)}")
        lines.extend(f"     - {e}" for e in c.evidence)
    return lines


def shared_lines(tr: Trace) -> list[str]:
    """The shared sessions on the chain (tracer/sharing.py), under it: the session in one line,
    then each client with its command and its own chain, and the session's note."""
    lines = []
    for ss in tr.shared:
        lines.append("")
        lines.append(f"Shared session: {shared.line(ss)}")
        if ss.path:
            lines.append(f"  {shared.path_said(ss)} {_short(ss.path, 120)}")
        for c in ss.clients[:MAX_CLIENT_LINES]:
            lines.append(f"  - {shared.who_said(c.who)}: {shared.ROLE_SHORT.get(c.role, c.role)} "
                         f"{shared.when_said(c)}; `{_short(c.command, 70)}` pid {c.pid} on {c.host}")
            lines.append(f"      {_short(c.summary, 160)}")
        if len(ss.clients) > MAX_CLIENT_LINES:
            lines.append(f"  - ... and {len(ss.clients) - MAX_CLIENT_LINES} more clients (--json or --html lists them all)")
        if ss.note and ss.note not in tr.notes:     # said once: the Notes list may carry it
            lines.append(f"  ({ss.note})")
    return lines


def render_text(query: Query, traces: list[Trace], now: float) -> str:
    window = f" over the last {format_span(now - query.since)}" if query.since else ""
    # a user: search that stopped before the oldest match (tracer Found.looked_at)
    looked_at = getattr(traces, "looked_at", None)
    stopped = ""
    if looked_at:
        stopped = (f"Not known: the search for what involves {printable(query.user or '')} traced the newest "
                   f"{looked_at:,} matches, back to {clock(traces.looked_to)}, and stopped there (docs/query.md, "
                   "user:); older ones were not looked at, and may involve them. To look further back, ask again "
                   f"with {further_back(query.since, traces.looked_to, flags=True)}"
                   + ("" if query.host else ", or narrow it with --host")
                   + ".")
    if not traces:
        if stopped:
            return f"No {printable(query.describe())}{window} among the newest {looked_at:,} matches.\n{stopped}"
        return (f"No {printable(query.describe())}{window}.\n"
                f"Try a wider window (--since 30d), a shorter pattern, or check the host "
                f"filter; `whodid db stats` shows what the store holds.")
    text = "\n\n".join(render_trace(t, now, i, len(traces)) for i, t in enumerate(traces, 1))
    return f"{text}\n\n{stopped}" if stopped else text
