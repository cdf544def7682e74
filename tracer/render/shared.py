"""A shared session (a tmux or screen server, an ssh master) in the words every renderer uses.

The text, the JSON, the picture, the trace page and Slack say the same thing about who
started the server and who used it (tracer/sharing.py), so the wording lives here, once, as
confidence.py's does for the answer. The rules are the confidence contract's: a client or a
starter whose chain names nobody is "person unknown" - the shared account, root or bare uid
its chain stopped at is said as an account, never as the person; an inferred person says so;
a client's role is said as what the evidence shows ("attached", "sent keys", "asked the
master for this session"), never "typed". Recorded data (commands, hosts, paths, accounts)
passes through unchanged: each renderer escapes it for where it goes.
"""

from __future__ import annotations

from ..sharing import (ASKED, ATTACHED, INJECTED, SCREEN, SSH_FORWARD, SSH_MASTER, TMUX, USED, SessionClient,
                       SharedSession)
from ..stitch import INFERRED, Attribution
from ..when import clock
from .confidence import person

KIND_NAME = {TMUX: "tmux server", SCREEN: "screen server", SSH_MASTER: "ssh master connection",
             SSH_FORWARD: "ssh port forward"}
# what the clients of each role did, as a heading for their list
ROLE_SAID = {ATTACHED: "attached when it ran", INJECTED: "sent keys", ASKED: "asked the master for this session",
             USED: "used the forward for this hop"}
ROLE_SHORT = {ATTACHED: "attached", INJECTED: "sent keys", ASKED: "asked the master", USED: "used the forward"}
# what is said when a shared session on a chain has no client to show
NO_CLIENT = {SSH_MASTER: "no client asked the master when it ran",
             SSH_FORWARD: "no connect to the forwarded port was recorded for this hop"}


def kind_name(ss: SharedSession) -> str:
    return KIND_NAME.get(ss.kind, f"{ss.kind} session")


def who_said(who: Attribution) -> str:
    """jim, jim (inferred), or "person unknown (account ubuntu)": the account where the chain
    stopped is named as an account, so it never reads as the person."""
    name = person(who)
    if not who.known:
        return f"{name} (account {who.account})" if who.account else name
    return f"{name} (inferred)" if who.confidence == INFERRED else name


def person_or_none(who: Attribution) -> str | None:
    """The person for JSON: null when the evidence names nobody (as `attributed_to.user`)."""
    return who.user if who.known else None


def _hms(ts: float | None) -> str:
    return clock(ts)[11:19] if ts is not None else "?"


def when_said(c: SessionClient) -> str:
    """When the client used the session: "from 10:02:11, still attached", "from 10:02:11 to
    10:40:00", or the moment a one-shot client sent keys or asked the master."""
    if c.role == ATTACHED:
        if c.since is None:
            return "attach time not recorded" + (f", gone at {_hms(c.until)}" if c.until is not None else "")
        return f"from {_hms(c.since)}" + (", still attached" if c.until is None else f" to {_hms(c.until)}")
    return f"at {_hms(c.since)}" if c.since is not None else "time not recorded"


def client_said(c: SessionClient) -> str:
    """bob (from 10:02:11, still attached), bob (inferred, at 10:05:00), person unknown (account
    ubuntu, at 10:05:00)"""
    who = c.who
    said = [f"account {who.account}"] if not who.known and who.account else []
    said += ["inferred"] if who.known and who.confidence == INFERRED else []
    return f"{person(who)} ({', '.join(said + [when_said(c)])})"


def title(ss: SharedSession) -> str:
    """tmux server pid 812 on host-b"""
    return f"{kind_name(ss)} pid {ss.pid} on {ss.host}"


def started_said(ss: SharedSession) -> str:
    return f"started by {who_said(ss.starter)}"


def by_role(ss: SharedSession) -> list[tuple[str, list[SessionClient]]]:
    """The clients grouped by role, in a fixed order (attached, injected, asked)."""
    groups = [(role, [c for c in ss.clients if c.role == role]) for role in ROLE_SAID]
    odd = [c for c in ss.clients if c.role not in ROLE_SAID]
    return [g for g in groups if g[1]] + ([("used it", odd)] if odd else [])


def line(ss: SharedSession) -> str:
    """The whole session in one line: "tmux server pid 812 on host-b, started by jim (inferred);
    attached when it ran: bob (from 10:02:11, still attached), jim (from ...)"."""
    parts = [f"{title(ss)}, {started_said(ss)}"]
    groups = by_role(ss)
    for role, clients in groups:
        parts.append(f"{ROLE_SAID.get(role, role)}: " + ", ".join(client_said(c) for c in clients))
    if not groups:
        parts.append(no_client(ss))
    return "; ".join(parts)


def path_said(ss: SharedSession) -> str:
    """What a session's path is: a socket, or - a forward - the ports it listens on."""
    return "forwarded port" if ss.kind == SSH_FORWARD else "socket"


def no_client(ss: SharedSession) -> str:
    return NO_CLIENT.get(ss.kind, "no client was attached when it ran")


def client_label(c: SessionClient) -> str:
    """A client in a picture's box: "bob, attached 10:02–", "person unknown, sent keys 10:05"
    (the account goes in the box's second line, client_where)."""
    name = person(c.who)
    if c.role == ATTACHED:
        since = _hms(c.since)[:5] if c.since is not None else "?"
        until = _hms(c.until)[:5] if c.until is not None else ""
        return f"{name}, attached {since}–{until}"
    return f"{name}, {ROLE_SHORT.get(c.role, c.role)} {_hms(c.since)[:5] if c.since is not None else ''}".rstrip()


def short_kind(ss: SharedSession) -> str:
    """For a box's first line: "ssh master" rather than "ssh master connection"."""
    return {SSH_MASTER: "ssh master", SSH_FORWARD: "ssh forward"}.get(ss.kind) or kind_name(ss)


def session_why(ss: SharedSession) -> str:
    """Why a chain step is joined to its session, for a link's tooltip."""
    if ss.kind == SSH_FORWARD:
        return (f"This ssh hop came through the {kind_name(ss)} of pid {ss.pid} on {ss.host} ({ss.path}), "
                f"{started_said(ss)}: whoever reached its forwarded port could use it.")
    if ss.kind == SSH_MASTER:
        return (f"This ssh hop was carried by the {kind_name(ss)} pid {ss.pid} on {ss.host}, {started_said(ss)}: "
                "whoever reached its control socket could ask it for a session.")
    return (f"This step runs in the {kind_name(ss)} pid {ss.pid} on {ss.host}, {started_said(ss)}: "
            "whoever reached its socket could attach and type.")


def client_why(ss: SharedSession, c: SessionClient) -> str:
    """Why a client is joined to a session, for a link's tooltip: what it did, when, and whose it is."""
    did = {ATTACHED: f"was attached to the {kind_name(ss)}",
           INJECTED: f"sent keys into the {kind_name(ss)}",
           ASKED: f"asked the {kind_name(ss)} for the session the command ran in",
           USED: f"connected to the {kind_name(ss)}'s port ({ss.path}) for the hop the chain came through",
           }.get(c.role, f"used the {kind_name(ss)}")
    command = c.command if len(c.command) <= 200 else c.command[:199] + "…"
    return (f"{command} (pid {c.pid} on {c.host}) {did}, {when_said(c)}; its own chain: {c.summary} "
            f"(person: {who_said(c.who)})")
