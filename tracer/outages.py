"""Agent outages: when a host's agent was not running, and which links of a chain cross it.

An agent marks its runs in `host` events (docs/events.md): a start, a heartbeat while it
runs, a stop when it stops cleanly. The store keeps one Run per (host, run); what lies
between one run's last mark and the next run's first is an Outage - nothing that happened on
the host then was recorded. These functions are pure: the store hands them runs, trace.py
hands them a chain, and they say which outages there were and which links cross them.

Rules:
- Outages are only *between* runs. Before a host's first run the agent was not installed,
  not down; after its last run it is taken to be running (its heartbeats say how long).
  A host with no runs (the auditd import) has no outages, never a made-up one.
- Runs may overlap (two agents at once, clocks): an outage is a time no run covers.
- A run that ended uncleanly has no stop: its outage begins at its last heartbeat. The
  outage is then longer than the real one, never shorter.
- A link crosses an outage when its parent step was recorded before the outage began and the
  step itself at or after it: what the parent did in between (a fork, an exec, a uid change,
  a child that exited) was not seen, and the parent is one process across the restart only by
  the store's tick join (docs/events.md, Process identity). A step that only the restarted
  agent's /proc snapshot recorded, of a process started during the outage, has a parent read
  from /proc at restart, not seen at fork time. Both are inferred, with a note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from .when import clock, format_duration


@dataclass(frozen=True)
class Run:
    """One run of a host's agent, as the store keeps it."""
    host: str
    boot: str
    run: str
    first: float                # its earliest mark (the start, when it arrived)
    last: float                 # its latest mark (the stop, or the last heartbeat)
    stopped: float | None       # a clean stop's time; None while running or after a crash


@dataclass(frozen=True)
class Outage:
    """A time a host's agent was not running."""
    host: str
    since: float                # the run before: its stop, or its last heartbeat
    until: float                # the next run's start
    clean: bool                 # the run before stopped cleanly (else: killed, crashed, power lost)
    reboot: bool                # the host rebooted in between

    @property
    def seconds(self) -> float:
        return self.until - self.since


class ChainStep(Protocol):      # what a link needs of stitch.Step
    host: str
    start: float
    snapshot: bool
    inferred: bool
    note: str | None


def outages(runs: Iterable[Run]) -> list[Outage]:
    """The gaps between runs, per host, oldest first."""
    by_host: dict[str, list[Run]] = {}
    for r in runs:
        by_host.setdefault(r.host, []).append(r)
    out: list[Outage] = []
    for host, rs in sorted(by_host.items()):
        rs.sort(key=lambda r: (r.first, r.last))
        cover = rs[0]                       # the run that reaches furthest so far
        for r in rs[1:]:
            if r.first > cover.last:
                out.append(Outage(host, cover.last, r.first, clean=cover.stopped is not None,
                                  reboot=r.boot != cover.boot))
            if r.last >= cover.last:
                cover = r
    return out


def overlapping(found: Iterable[Outage], t0: float, t1: float) -> list[Outage]:
    """The outages that share some time with [t0, t1]."""
    return [o for o in found if o.since <= t1 and o.until >= t0]


def crossed(prev: ChainStep, cur: ChainStep, found: Iterable[Outage]) -> Outage | None:
    """The outage the link prev -> cur crosses on cur's host, if any (see the module's rules)."""
    for o in found:
        if o.host != cur.host:
            continue
        if cur.snapshot and o.since <= cur.start <= o.until:
            return o
        if prev.host == cur.host and prev.start <= o.since <= cur.start:
            return o
    return None


def mark_links(chain: list[ChainStep], found: list[Outage]) -> None:
    """Mark inferred, with a note, each link of the chain that crosses an outage. A link that is
    inferred already (a session join) keeps its note, with the outage added."""
    for prev, cur in zip(chain, chain[1:]):
        o = crossed(prev, cur, found)
        if o is None:
            continue
        why = (f"inferred: {cur.host}'s agent was not running from {clock(o.since)} to {clock(o.until)}, "
               + ("and this process started then: its parent was read from /proc when the agent restarted"
                  if cur.snapshot and o.since <= cur.start <= o.until else
                  "between this step and its parent: what the parent did then was not recorded"))
        cur.note = f"{cur.note}; {why}" if cur.inferred and cur.note else why
        cur.inferred = True


def notes(chain: list[ChainStep], at: float, found: list[Outage]) -> list[str]:
    """For each outage on a host of the chain, within the chain's time on that host (from its
    first step there to its last, or to `at` on the last host), one line for people."""
    spans: dict[str, list[float]] = {}
    for s in chain:
        if s.start <= 0:                # a step whose time is unknown says nothing of when
            continue
        lo_hi = spans.setdefault(s.host, [s.start, s.start])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], s.start), max(lo_hi[1], s.start)
    if chain:
        last = spans.setdefault(chain[-1].host, [at, at])
        last[1] = max(last[1], at)
    said = []
    for o in found:
        span = spans.get(o.host)
        if span is None or not overlapping([o], span[0], span[1]):
            continue
        how = "" if o.clean else ("; it did not stop cleanly - killed, crashed or the power went - so this "
                                  "begins at its last heartbeat")
        if o.reboot:
            how += "; the host rebooted in between"
        said.append(f"{o.host}'s agent was not running from {clock(o.since)} to {clock(o.until)} "
                    f"({duration(o.seconds)}{how}): links on {o.host} in that time may be missing")
    return said


def duration(seconds: float) -> str:
    """format_duration, with the fractions a quick restart takes."""
    return f"{seconds:.1f}s" if seconds < 10 else format_duration(seconds)
