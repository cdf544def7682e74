"""The trace engine: find matching commands or file changes, and walk each back to a person.

SQL finds candidates; the walk fetches facts from the store and asks stitch.py how they
link; the result is a Trace - the chain, the attribution, and a networkx graph that the
renderers (text, JSON, and later PNG and Slack) draw.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from datetime import datetime, timedelta, timezone
import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import networkx as nx

from . import multiplexer, outages, sshmux, stitch
from .destinations import Destination, parse_destination
from .events import AUDIT_BOOT_PREFIX, AUID_UNSET
from .names import WEAKER
from .identity import Identity
from .sharing import ASKED, ATTACHED, INJECTED, SSH_FORWARD, SSH_MASTER, USED, SessionClient, SharedSession
from .stitch import Attribution, HopCandidate, Step
from .store import ConnMatch, Image, Proc, Store
from .when import clock, format_duration

MAX_HOPS = 16
# How far a `user:` question looks for matches that involve the user before it stops and says
# so (Found.looked_at): at most this many matches, traced at scope 0, and this many seconds. A
# trace at scope 0 takes 2 ms on a 10M-event store and ~13 ms on a 96M-event one (warm), so
# the seconds decide there: `sudo user:zed` over 7 days looked at ~400 of its matches in 5 s.
USER_SEARCH_MAX = 2000
USER_SEARCH_SECONDS = 5.0
MAX_DEPTH = 256          # processes walked up on one host before giving up (cycles, broken data)
# A login open this long before a process began is not offered as its candidate on time alone
# (a session id still joins it): it bounds the search, and a week-old session is weak evidence.
OPEN_LOGIN_HORIZON = 14 * 86400.0
# how long after a session's first process the agent may read its login's sshd log line: the
# agent waits 30 s for a line to match its connection (Assembler.match_logins), plus margin
LATE_LOGIN_LINE = 60.0
# multiplexers within multiplexers followed when tracing a session's clients (bob's client run
# in his own tmux): deeper ones are left to the chain as it stands
MUX_DEPTH = 2
# the context window of a wider scope, around the matched command's start: the person's other
# sessions (scope 3) and the children of the chain's other processes (scope 1) in it
CONTEXT_BEFORE = 86400.0
CONTEXT_AFTER = 3600.0


@dataclass
class Settings:
    gap_threshold: float = 300.0     # pauses at least this long are called out
    hop_window: float = 600.0        # a client connect may precede its login by this much
    clock_skew: float = 120.0        # and follow it by this much (unsynchronised clocks)
    max_nodes: int = 2000            # wider scopes stop adding context past this
    silent_after: float = 900.0      # a host whose last batch is older than this is called silent
    inject_window: float = multiplexer.INJECT_WINDOW   # a one-shot tmux/screen client (send-keys)
                                     # this long before a command counts as its input
    mux_rtt: float = 5.0             # an ssh master opens a channel at most this long after a client asks
    mux_skew: float = 2.0            # clocks of two hosts may still differ by this, measured offsets applied


@dataclass
class Query:
    pattern: str
    host: str | None = None          # glob on host names
    user: str | None = None          # person, login user or effective user anywhere on the chain
    since: float | None = None
    until: float | None = None
    scope: int = 0
    limit: int = 5
    started: bool = False            # add everything the matched command started
    # connections (issue 21): who connected to a destination, who came in from a source (an
    # accepted connection; its PORT is the local port reached), who listened on a port. With
    # one of them the pattern may be empty (the connection is the match); with a pattern too,
    # the connecting process must also have run a matching command. One at a time.
    to: Destination | None = None
    from_: Destination | None = None
    listen: int | None = None

    @property
    def connection(self) -> tuple[str, Destination | None, int | None] | None:
        """(direction, destination, port) when the question is about connections, else None."""
        asked = [(d, dest, port) for d, dest, port in (("connect", self.to, None), ("accept", self.from_, None),
                                                       ("listen", None, self.listen))
                 if dest is not None or port is not None]
        if len(asked) > 1:
            raise ValueError("ask by one of to:, from: or listen: at a time")
        return asked[0] if asked else None

    @property
    def is_path(self) -> bool:
        return self.pattern.startswith("/") and self.connection is None

    @property
    def is_glob(self) -> bool:
        return any(ch in self.pattern for ch in "*?[")

    def describe(self) -> str:
        what = f"changes to {self.pattern}" if self.is_path else f"commands matching `{self.pattern}`"
        conn = self.connection
        if conn is not None:
            said = {"connect": f"connections to {conn[1].text if conn[1] else ''}",
                    "accept": f"connections from {conn[1].text if conn[1] else ''}",
                    "listen": f"listens on port {conn[2]}"}[conn[0]]
            what = said + (f" by commands matching `{self.pattern}`" if self.pattern else "")
        parts = [what]
        if self.host:
            parts.append(f"on hosts {self.host}")
        if self.user:
            parts.append(f"involving user {self.user}")
        return " ".join(parts)


@dataclass(frozen=True)
class Target:
    """Which match a trace is of, by identities that survive re-ingest and pid reuse: the process
    (host, boot, pid, start - the store's natural key), and the exec at `at`, or - for a file
    change - the change (`op` on `path`) at `at`. A signed link or button carries it, so what
    it shows cannot change when newer commands match the same pattern."""
    host: str
    boot: str
    pid: int
    start: int
    at: float
    op: str | None = None
    path: str | None = None

    @property
    def kind(self) -> str:
        """`command` (an exec), `file` (a change: op is a file operation) or `connection` (op is
        the direction - connect, accept, listen - and path what was asked: the destination as
        given, or the listening port; `at` the group's last connection). Connections reuse op
        and path so that a signed value keeps its seven fields and older ones read as before."""
        if self.path is None:
            return "command"
        return "connection" if self.op in CONN_DIRECTIONS else "file"


CONN_DIRECTIONS = ("connect", "accept", "listen")


@dataclass
class Peer:
    """The other end of a group's connections, as recorded: a destination (connect), a source
    (accept: `port` is the local port it came to) or the listening socket (listen)."""
    addr: str
    port: int
    name: str | None            # the name the host resolved it from, or the one asked that holds it
    count: int
    first: float
    last: float
    laddr: str | None = None


@dataclass
class Connections:
    """One match of a connection question: a process's connections, grouped at query time."""
    direction: str              # connect | accept | listen
    asked: str                  # the destination as asked, or the port listened on
    count: int
    first: float
    last: float
    peers: list[Peer]
    login: dict[str, Any] | None = None     # an accept: the login it carried (an sshd session)
    how: list[str] = field(default_factory=list)   # how a name became addresses: "eks-prod: config network.names"


def whole_ms(ts: float, up: bool) -> str | None:
    """ts as an ISO time to the millisecond, rounded up (or down) so that, read back, it is at or
    above (at or below) ts - checked, as float arithmetic may land a ulp short. None past the
    calendar's end (year 9999)."""
    ms = math.ceil(ts * 1000) if up else math.floor(ts * 1000)
    if up and ms / 1000 < ts:
        ms += 1
    elif not up and ms / 1000 > ts:
        ms -= 1
    try:
        moment = datetime.fromtimestamp(ms // 1000, timezone.utc) + timedelta(milliseconds=ms % 1000)
    except (OverflowError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def further_back(since: float | None, looked_to: float, flags: bool = False) -> str:
    """The window that reaches the matches a stopped `user:` search did not look at (Found):
    since as asked, as a time (a duration would slide), and until the oldest match it looked
    at - inclusive, to the millisecond at or above it, so none at that instant is missed (no
    until past the calendar's end). `since:X until:Y`, or `--since X --until Y` with flags."""
    words = [("since", whole_ms(since, False) if since is not None else None), ("until", whole_ms(looked_to, True))]
    return " ".join(f"--{k} {v}" if flags else f"{k}:{v}" for k, v in words if v is not None)


class Found(list):
    """find()'s traces, newest first. Set when a `user:` search stopped before the oldest match
    (USER_SEARCH_MAX, USER_SEARCH_SECONDS) with fewer than its limit found: `looked_at`, how many
    matches it traced, and `looked_to`, the time of the oldest of them - older ones were not looked
    at and may involve the user. `more`: older matches than these exist (find() looks for one
    more than its limit in the store; a `user:` search leaves it to a caller that asks for one
    more trace than it keeps, as the Slack bot does)."""
    looked_at: int | None = None
    looked_to: float | None = None
    more: bool = False


@dataclass
class Trace:
    poi: Step                              # the matched command (or the process that changed the file)
    change: dict[str, Any] | None          # the file change, for path queries
    chain: list[Step]
    attributed: Attribution
    gaps: list[dict[str, Any]]
    notes: list[str]                       # for people: inferred links, conflicts, losses, config hints
    summary: str
    graph: nx.DiGraph
    scope: int
    truncated: list[str] = field(default_factory=list)
    exit_code: int | None = None
    target: Target | None = None
    # the matched process's exec chain, in order: what it was exec'd as (a shim, `env FOO=1`, a
    # wrapper script) and what it became; one match per process shows them all
    execs: list[Image] = field(default_factory=list)
    # multiplexer servers and ssh masters on the chain, and who used them (sharing.py)
    shared: list[SharedSession] = field(default_factory=list)
    # a connection question's match: the process's connections (to, from or listening)
    connections: Connections | None = None



def first_per_client(uconns) -> list[dict[str, Any]]:
    """Unix connections (earliest first), one per client process: each restarted agent's
    snapshot (agent/unixdiag.py) finds a connection still open anew, under a new conn id and at
    the time it was found; the client's earliest is when it connected."""
    seen: set[int] = set()
    out = []
    for u in uconns:
        if u["client"] not in seen:
            seen.add(u["client"])
            out.append(u)
    return out

# name -> [(network or address, where it came from)]: what a destination's name stands for beyond
# the name recorded with each connection. tracer/names.py's addresses_for, its recorded names,
# config network.names and resolver bound in (functools.partial); None: recorded names only.
AddressesFor = Callable[[str], Iterable[tuple[Any, str]]]


class Tracer:
    def __init__(self, store: Store, identity: Identity | None = None, settings: Settings | None = None,
                 addresses_for: AddressesFor | None = None):
        self.store = store
        self.addresses_for = addresses_for
        self.identity = identity or Identity()
        self.settings = settings or Settings()
        self._names: dict[tuple[int, int], str | None] = {}
        self._offsets: dict[str, float] | None = None
        self._inventory: dict[str, dict[str, Any]] | None = None
        self._boots: dict[int, str] = {}
        self._carried: list[_Carried] = []     # ssh masters found on the chain being built (_shared_master)
        self._mux_depth = 0

    def _clocks(self) -> dict[str, float]:
        if self._offsets is None:
            self._offsets = self.store.clock_offsets()
        return self._offsets

    def _offset(self, host: str) -> float:
        """Seconds to add to a host's timestamps to put them on the collector's clock (0 when
        the host's agent never measured it, as in local mode)."""
        return self._clocks().get(host, 0.0)

    def _spread(self) -> float:
        offsets = self._clocks()
        return (max(offsets.values()) - min(offsets.values())) if offsets else 0.0

    # --- search --------------------------------------------------------------------------

    def find(self, query: Query) -> Found:
        """Traces of the query's matches, newest first, at most query.limit. With `user:`, see
        _find_involving."""
        if query.user:
            return self._find_involving(query)
        matches = self._matches(query, query.limit + 1)    # one more row, not one more trace
        found = Found(make(query.scope, query.started) for _, _, make in matches[:query.limit])
        found.more = len(matches) > query.limit
        return found

    def _find_involving(self, query: Query) -> Found:
        """A `user:` question: each match is traced (scope 0) to see whether it involves the user,
        newest first, the search widening (x4) until `limit` are found, the matches run out, or
        USER_SEARCH_MAX have been looked at or USER_SEARCH_SECONDS spent. Where it stopped before
        the oldest match, the answer says how far it looked (Found.looked_at, looked_to), so "none
        involving jim" is never said of matches nobody looked at."""
        fetch = min(max(query.limit * 20, 200), USER_SEARCH_MAX)
        found: list[tuple[float, Callable[[int, bool], Trace], Trace]] = []
        looked: set = set()
        oldest: float | None = None
        deadline = time.monotonic() + USER_SEARCH_SECONDS
        stopped = False
        while True:
            matches = self._matches(query, fetch + 1)       # one more: are there more than fetch?
            for key, when, make in matches[:fetch]:
                if key in looked:                           # looked at in a narrower round
                    continue
                if looked and time.monotonic() > deadline:
                    stopped = True
                    break
                looked.add(key)
                oldest = when if oldest is None else min(oldest, when)
                tr = make(0, False)
                if _involves(tr, query.user):
                    found.append((when, make, tr))
                    if len(found) >= query.limit:
                        break
            if stopped or len(found) >= query.limit or len(matches) <= fetch:
                break                                       # ... or every match looked at
            if fetch >= USER_SEARCH_MAX:
                stopped = True
                break
            fetch = min(fetch * 4, USER_SEARCH_MAX)
        # newest first, also when a newer match was stored between two rounds
        found.sort(key=lambda f: f[0], reverse=True)
        out = Found(make(query.scope, query.started) if query.scope or query.started else tr
                    for _, make, tr in found[:query.limit])
        if stopped and len(out) < query.limit:
            out.looked_at, out.looked_to = len(looked), oldest
        return out

    def _matches(self, query: Query, fetch: int) -> list[tuple[Any, float, Callable[[int, bool], Trace]]]:
        """The query's newest `fetch` matches, each as (a key that names it, its time, a function
        that traces it at a scope, started or not)."""
        if query.connection is not None:
            return self._connection_matches(query, fetch)
        if query.is_path:
            hits = self.store.search_files(query.pattern, glob=query.is_glob, since=query.since,
                                           until=query.until, host_glob=query.host, limit=fetch)
            return [((proc.id, change["ts"], change["op"], change["path"], change.get("path2")), change["ts"],
                     (lambda scope, started, proc=proc, change=change:
                      self.trace(proc, change=change, scope=scope, started=started)))
                    for proc, change in hits]
        pattern = f"*{query.pattern}*" if query.is_glob else query.pattern
        hits = self.store.search_commands(pattern, glob=query.is_glob, since=query.since,
                                          until=query.until, host_glob=query.host, limit=fetch)
        # one match per process (search_commands): its newest matching exec
        return [(proc.id, image.ts, (lambda scope, started, proc=proc, image=image:
                                     self.trace(proc, image=image, scope=scope, started=started)))
                for proc, image in hits]

    # --- connections (issue 21) ---------------------------------------------------------------

    def conn_match(self, direction: str, dest: Destination | None, port: int | None,
                   command: tuple[str, bool] | None = None) -> tuple[ConnMatch, dict[str, tuple[str, str]], list[str]]:
        """The store's terms for a connection question: (match, address -> (the name asked that
        holds it, where that came from: tracer/names.py's sources), how each name became
        addresses). A name is matched against the name recorded with each connection, and -
        through addresses_for, when given - the addresses it stands for (config network.names,
        resolution now); a glob only against recorded names."""
        if dest is None:
            return ConnMatch(direction, port=port, command=command), {}, []
        nets = list(dest.networks)
        label: dict[str, tuple[str, str]] = {}
        how: list[str] = []
        for name in dest.names:
            if self.addresses_for is None or any(ch in name for ch in "*?["):
                continue
            for net, source in self.addresses_for(name):
                net = ipaddress.ip_network(str(net), strict=False)
                nets.append(net)
                how.append(f"{name} -> {net.with_prefixlen if net.num_addresses > 1 else net.network_address} "
                           f"({source})")
                if net.num_addresses == 1:
                    label[str(net.network_address)] = (name, source)
        exact = tuple(dict.fromkeys(str(n.network_address) for n in nets if n.num_addresses == 1))
        wide = tuple(dict.fromkeys(str(n) for n in nets if n.num_addresses > 1))
        return (ConnMatch(direction, addrs=exact, nets=wide, names=dest.names, port=dest.port if port is None else port,
                          command=command), label, how)

    def _connection_matches(self, query: Query, fetch: int) -> list[tuple[Any, float, Callable[[int, bool], Trace]]]:
        direction, dest, port = query.connection
        command = None
        if query.pattern:
            command = (f"*{query.pattern}*", True) if query.is_glob else (query.pattern, False)
        m, label, how = self.conn_match(direction, dest, port, command)
        asked = dest.text if dest is not None else str(port)
        return [(group["proc"], group["last"],
                 (lambda scope, started, group=group:
                  self._connection_trace(m, group, asked, label, how, since=query.since, until=query.until,
                                         scope=scope, started=started)))
                for group in self.store.connection_groups(m, since=query.since, until=query.until,
                                                          host_glob=query.host, limit=fetch)]

    def _connection_trace(self, m: ConnMatch, group: dict[str, Any], asked: str, label: dict[str, tuple[str, str]],
                          how: list[str], *, since: float | None, until: float | None, scope: int,
                          started: bool) -> Trace:
        """A group traced as a command is: the connecting process's latest exec at or before its
        last connection is the point of interest (none recorded: the program it inherited)."""
        proc = self.store.proc(group["proc"])
        login = self.store.login(group["login"]) if group.get("login") else None
        peers = [Peer(addr=p["laddr"] if m.direction == "listen" else p["raddr"],
                      port=p["rport"] if m.direction == "connect" else p["lport"],
                      name=p["rname"] or label.get(p["raddr"], (None,))[0], count=p["count"], first=p["first"],
                      last=p["last"], laddr=p["laddr"])
                 for p in self.store.connection_peers(m, proc.id, since=since, until=until)]
        said_of_names = _names_said(m, peers, label) if m.direction == "connect" else []
        conns = Connections(direction=m.direction, asked=asked, count=group["count"], first=group["first"],
                            last=group["last"], peers=peers, login=login, how=how)
        at = max(group["last"], login["ts"]) if login else group["last"]
        image = next((im for im in reversed(self.store.images(proc.id)) if im.ts <= at), None)
        tr = self.trace(proc, image=image, connections=conns, at=at, scope=scope, started=started)
        tr.notes += said_of_names
        if m.direction == "connect":
            self._serving_others(tr, proc, group["last"])
        elif m.direction == "accept" and login is None:
            self._came_in_unseen(tr, asked)
        for other, began, first, last in self.store.reused_during_counts(m, proc.id, since=since, until=until):
            im = next((i for i in self.store.images(other)), None)
            what = f"`{im.cmd}`" if im else "a process whose program was not recorded"
            tr.notes.append(f"pid {proc.pid} was reused at {clock(began)} by another process ({what}) while the "
                            f"agent was counting these connections ({clock(first)} to {clock(last)}, over its "
                            "budget, by pid and minute): some of them may be that process's")
        return tr

    @staticmethod
    def _came_in_unseen(tr: Trace, asked: str) -> None:
        """Who came in from an address, when no login carried the connection (a web server, a
        listener someone started): the accepting process's chain names who started the server,
        not who was at the other end. Person unknown; the starter a candidate, said as such."""
        program = f"{tr.poi.program or tr.poi.command} (pid {tr.poi.pid})"
        note = (f"no login carried the connection from {asked}: {program} accepted it, and nothing recorded "
                "names who was at the other end")
        _starter_not_the_answer(tr, note, f"{program} accepted it; who connected is not recorded",
                                f"started {program}, which accepted the connection - not who made it")

    def _serving_others(self, tr: Trace, proc: Proc, last: float) -> None:
        """A process that accepted others' connections before it connected (squid, a SOCKS or
        `-L` forward, kubectl proxy, a CI runner's helper) may have connected for any of them:
        the chain names who started it, not whose request it carried. Person unknown, the
        starter a candidate, and a note saying whom it served."""
        relays = [(tr.poi, last)]
        hop = next((i for i in range(len(tr.chain) - 1, 0, -1) if tr.chain[i].edge == "ssh"), None)
        if tr.poi.program.startswith("sshd") and hop is not None and tr.chain[hop].host == tr.poi.host:
            # sshd opens a connection for a channel its client asked for (`-L`, `-D`, `-W`): the
            # client's forward may have been used by anyone who reached its port
            client = tr.chain[hop - 1]
            relays.append((client, last + self._offset(tr.poi.host) - self._offset(client.host)))
        for step, until in relays:
            served, sources = self.store.accepts_by(step.proc, until)
            if served:
                break
        else:
            return
        program = f"{step.program or step.command} (pid {step.pid})"
        relayed = "it" if step is tr.poi else f"sshd (pid {proc.pid}) on {proc.host} connected for its channel"
        more = f" and {served - len(sources):,} more" if served > len(sources) else ""
        note = (f"{program}{'' if step is tr.poi else f' on {step.host}'} had accepted {served:,} "
                f"connection{'s' if served != 1 else ''} ({', '.join(sources)}{more}) before "
                f"{'it connected' if step is tr.poi else relayed}: it may have connected for one of its "
                "clients, so who started it is not who asked")
        evidence = f"started {program}, which served others' connections"
        _starter_not_the_answer(tr, note, f"the connection was made for {program}, which served others' connections",
                                evidence)

    def pinned(self, target: Target, scope: int = 0, started: bool = False) -> Trace | None:
        """The trace of exactly this match, or None when it is no longer stored (retention). A
        connection match is the process's connections of that direction to what was asked, up
        to the last one shown when the link was made: newer ones do not change it."""
        proc = self.store.find_proc(target.host, target.boot, target.pid, target.start)
        if proc is None:
            return None
        if target.kind == "connection":
            try:
                dest = None if target.op == "listen" else parse_destination(target.path)
                port = int(target.path) if target.op == "listen" else None
            except ValueError:
                return None
            m, label, how = self.conn_match(target.op, dest, port)
            group = next((g for g in self.store.connection_groups(m, since=None, until=target.at, host_glob=None,
                                                                  limit=1, proc=proc.id)), None)
            if group is None:
                return None
            return self._connection_trace(m, group, target.path, label, how, since=None, until=target.at,
                                          scope=scope, started=started)
        if target.path is None:
            image = next((im for im in self.store.images(proc.id) if im.ts == target.at), None)
            return None if image is None else self.trace(proc, image=image, scope=scope, started=started)
        change = next((ch for ch in self.store.file_changes(proc.id, target.at)
                       if ch["op"] == target.op and ch["path"] == target.path), None)
        return None if change is None else self.trace(proc, change=change, scope=scope, started=started)

    def target(self, proc: Proc, image: Image | None, change: dict[str, Any] | None,
               connections: Connections | None = None) -> Target:
        boot = self._boots.get(proc.boot)
        if boot is None:
            boot = self._boots[proc.boot] = self.store.boot_name(proc.boot)
        if connections is not None:
            return Target(proc.host, boot, proc.pid, proc.start, connections.last, connections.direction,
                          connections.asked)
        if change is not None:
            return Target(proc.host, boot, proc.pid, proc.start, change["ts"], change["op"], change["path"])
        return Target(proc.host, boot, proc.pid, proc.start, image.ts)

    # --- one trace -----------------------------------------------------------------------

    def trace(self, proc: Proc, *, image: Image | None = None, change: dict[str, Any] | None = None,
              scope: int = 0, started: bool = False, connections: Connections | None = None,
              at: float | None = None) -> Trace:
        if at is None:
            at = image.ts if image else change["ts"]
        self._carried = []
        chain, notes = self._chain(proc, at, image)
        notes += self._outage_notes(chain, at)      # before attribution: it marks links inferred
        poi = chain[-1]
        who = stitch.attribute(chain, self.identity)
        if not who.known and who.login_time is None:
            # no login names a person: which logins does the evidence about these processes point at
            # a scheduled job's candidates are its own processes' (the daemon carries the session
            # of whoever started it, which is not the job's)
            job = stitch.scheduled_job(chain)
            who = stitch.attribute(chain, self.identity, *stitch.rank_candidates(
                self._candidates(chain[job + 1:] if job else chain)))
        # the chain already goes on from an ssh master's asking client (_chain); a multiplexer on
        # it decides who was there, then a master whose asker is not known overrules the answer
        shared, who = self._shared_multiplexer(chain, at, who)
        who, carried = self._carried_sessions(chain, who)
        shared += carried
        said = notes + who.notes
        said += [f"{s.host}: {s.note}" for s in chain if s.inferred and s.note]
        said += self._loss_notes(chain, at)
        said += self._silent_notes(chain)
        graph = self._graph(chain)
        truncated: list[str] = []
        if scope > 0:
            truncated = self._widen(graph, chain, who, scope)
        if started:
            self._add_subtree(graph, poi.proc, 1 << 30, self.settings.max_nodes)
            if graph.number_of_nodes() >= self.settings.max_nodes:
                truncated.append(f"stopped adding what it started at {self.settings.max_nodes} nodes")
        _relink_context(graph)
        self._to_one_clock(graph)
        return Trace(poi=poi, change=change, chain=chain, attributed=who,
                     gaps=stitch.gaps(chain, self.settings.gap_threshold), notes=said,
                     summary=stitch.summary(chain, who), graph=graph, scope=scope, truncated=truncated,
                     exit_code=proc.exit_code, target=self.target(proc, image, change, connections),
                     execs=self.store.images(proc.id), shared=shared, connections=connections)

    # --- shared sessions: tmux and screen (multiplexer.py) ------------------------------------

    def _shared_multiplexer(self, chain: list[Step], at: float, who: Attribution,
                            seen: frozenset[int] = frozenset(), depth: int = 0
                            ) -> tuple[list[SharedSession], Attribution]:
        """The tmux and screen servers on the chain, who started each and which clients were
        attached or sent input when the command ran (each traced to its login as a command is),
        and the chain's attribution by multiplexer.decide: top-down, the answer for one server is
        who started the next. `who` is the chain's own attribution, kept when no client was
        there. `seen` are the servers being decided further up (a client traced inside a session
        being decided is that session's own input: a script in a pane, never a loop)."""
        sessions: list[SharedSession] = []
        decided: Attribution | None = None
        for i, server, kind, t in self._mux_servers(chain, at):
            if server.id in seen:
                continue
            starter = decided or self._who(chain[:i])
            clients, unseen, path = self._mux_clients(server, kind, t, seen | {server.id}, depth)
            own = self._starting_client(chain, i, server, t, starter)
            if own and any(s.host == server.host for s in sessions):
                # the starting client runs in a pane of a server above (tmux in tmux): who can type
                # through it at t is who was at that server then, not who started this one
                _, own.who = self._shared_multiplexer(chain[:i], t, self._who(chain[:i]), seen, depth)
            if own and all(c.proc != own.proc for c in clients):
                clients.insert(0, own)
            early = [] if unseen else self.store.unrecorded_unix_clients(server.id, t)
            decided, note = multiplexer.decide(kind, server.pid, starter, clients, unseen, kept=decided or who,
                                               unrecorded=[ts + self._offset(server.host) for ts in early])
            sessions.append(SharedSession(kind=kind, host=server.host, proc=server.id, pid=server.pid, path=path,
                                          step=i - 1, starter=starter, clients=clients, note=note))
        return sessions, decided or who

    def _mux_servers(self, chain: list[Step], at: float) -> list[tuple[int, Proc, str, float]]:
        """(index of the pane's step, the server, its kind, when the command ran in the pane) for
        each multiplexer server on the chain, top-down. The server is the parent of a pane's
        program; it forked from the client that started it (no exec), so the step above the
        pane's is that client's (or the server's own, when it exec'd). What ran in a pane above
        another server started when the next step on that host began (who typed `ssh` or `tmux
        new` there started what is below); in the lowest pane, the keys that ran the command
        were typed by whoever was there when the command itself ran (`at`, on that host's clock),
        however long ago its shell there started (`sudo -i` an hour before)."""
        out = []
        for i in range(1, len(chain)):
            prev, cur = chain[i - 1], chain[i]
            if cur.host != prev.host or cur.proc == prev.proc or cur.login:
                continue
            kind = multiplexer.server_kind(prev.program, cur.program)
            if kind is None and multiplexer.kind_of(prev.program) and multiplexer.kind_of(cur.program):
                # a window whose program is itself a client (`tmux new-window 'tmux new -s inner'`):
                # its parent is a server that accepted clients, forked from prev - not prev itself
                up = self.store.proc(cur.proc).parent
                if up not in (None, prev.proc) and self.store.unix_clients(up, float("-inf"), float("inf")):
                    kind = multiplexer.kind_of(prev.program)
            parent = self.store.proc(cur.proc).parent if kind else None
            server = self.store.proc(parent) if parent is not None else None
            if server is None:
                continue
            below = next((s for s in chain[i + 1:] if s.host == cur.host), None)
            out.append((i, server, kind, below.start if below else cur.start))
        if out:
            i, server, kind, _ = out[-1]
            out[-1] = (i, server, kind, at + self._offset(chain[-1].host) - self._offset(server.host))
        return out

    def _mux_clients(self, server: Proc, kind: str, t: float, seen: frozenset[int], depth: int
                     ) -> tuple[list[SessionClient], int, str | None]:
        """The clients of a multiplexer server that were attached at t or sent it input just
        before (multiplexer.role), each traced to its own login; how many connections had no
        known client process; and the socket's path."""
        window = self.settings.inject_window
        clients: list[SessionClient] = []
        unseen, path = 0, None
        for conn in self.store.unix_clients(server.id, t - window, t):
            path = path or conn["path"] or conn["bound"]
            if conn["client"] is None:
                unseen += multiplexer.role(kind, [], conn["since"], conn["until"], t, window) == ATTACHED
                continue
            if any(c.proc == conn["client"] for c in clients):
                continue            # found again by a restarted agent's snapshot: first_per_client
            proc = self.store.proc(conn["client"])
            images = self.store.images(proc.id)
            image = next((im for im in reversed(images) if im.ts <= conn["since"]), images[0] if images else None)
            argv = image.argv if image else []
            role = multiplexer.role(kind, argv, conn["since"], conn["until"], t, window)
            if role is None:
                continue
            chain, who = self._own_chain(proc, conn["since"], image)
            if any(sv.id in seen for _, sv, _, _ in self._mux_servers(chain, conn["since"])):
                continue            # run inside the session itself: its own input, as a script's
            if depth + 1 < MUX_DEPTH:
                # an attached client types what whoever is at its own terminal types: that is, for
                # a client run in another multiplexer (here, or over ssh from a window elsewhere),
                # who was at that one when the command ran - a one-shot client's keys, when it sent them
                when = conn["since"] if role == INJECTED else min(t, conn["until"] if conn["until"] is not None else t)
                _, who = self._shared_multiplexer(chain, when, who, seen, depth + 1)
            off = self._offset(proc.host)
            clients.append(SessionClient(
                role=role, proc=proc.id, host=proc.host, pid=proc.pid,
                command=image.cmd if image else f"pid {proc.pid} (program not recorded)",
                since=conn["since"] + off, until=None if conn["until"] is None else conn["until"] + off,
                who=who, summary=stitch.summary(chain, who),
                doubt=self._exit_doubt(proc, conn["since"], t) if conn["until"] is None else ""))
        return clients, unseen, path

    def _exit_doubt(self, proc: Proc, since: float, t: float) -> str:
        """Why a client with no recorded exit may not have been there at t, or "": its parent
        (the shell it ran in the foreground of) exited before t, or its host lost records or its
        agent was down between its connect and t - an exit lost there leaves it attached forever."""
        parent = self.store.proc(proc.parent) if proc.parent is not None else None
        if parent is not None and parent.exit_ts is not None and parent.exit_ts < t:
            return f"its parent (pid {parent.pid}) exited at {clock(parent.exit_ts)}, and its own exit was not recorded"
        lost = self.store.losses([proc.host], since, t)
        if lost:
            return f"{proc.host} lost records from {clock(lost[0]['since'])} to {clock(lost[0]['ts'])}"
        down = self.store.outages([proc.host], since, t)
        if down:
            return f"{proc.host}'s agent was not running from {clock(down[0].since)} to {clock(down[0].until)}"
        return ""

    def _starting_client(self, chain: list[Step], i: int, server: Proc, t: float,
                         starter: Attribution) -> SessionClient | None:
        """The client that started the server (`tmux new -s x`, `screen -S x`, not `-d`), when it
        was still running at t: it talks to the server it forked over a socketpair (tmux 3) or
        the terminal (screen), so no connect of its own was recorded, yet it is attached - the
        starter, by the chain above it."""
        step = chain[i - 1]
        if step.proc == server.id or not multiplexer.kind_of(step.program):
            return None
        proc = self.store.proc(step.proc)
        if step.start > t or (proc.exit_ts is not None and proc.exit_ts < t):
            return None
        off = self._offset(proc.host)
        return SessionClient(role=ATTACHED, proc=proc.id, host=proc.host, pid=proc.pid, command=step.command,
                             since=step.start + off, until=None if proc.exit_ts is None else proc.exit_ts + off,
                             who=starter, summary=stitch.summary(chain[:i], starter))

    def _own_chain(self, p: Proc, t: float, image: Image | None) -> tuple[list[Step], Attribution]:
        """Another process's chain (a multiplexer's client, a master's, a mux client's) and its
        attribution as `trace` makes it: an ssh master on that chain whose asker is not known
        makes it person unknown there too - the master's owner is not who used it. The masters
        it found stay its own, apart from the trace being built."""
        saved, self._carried = self._carried, []
        try:
            chain, _ = self._chain(p, t, image)
            who, _ = self._carried_sessions(chain, self._who(chain))
        finally:
            self._carried = saved
        return chain, who

    def _who(self, chain: list[Step]) -> Attribution:
        """A chain's attribution as `trace` makes it: with the candidates evidence points at when
        no login names a person."""
        who = stitch.attribute(chain, self.identity)
        if not who.known and who.login_time is None:
            job = stitch.scheduled_job(chain)
            who = stitch.attribute(chain, self.identity, *stitch.rank_candidates(
                self._candidates(chain[job + 1:] if job else chain)))
        return who

    def earlier(self, tr: Trace, window: float = 86400.0, limit: int = 40) -> list[Step]:
        """What the attributed person did before the matched command, newest last: the commands
        of the chain's login sessions and of their other sessions within `window`. Nothing when
        the person is unknown: there is no one whose earlier work to show."""
        if not tr.attributed.known:
            return []
        logins = [s.login for s in tr.chain if s.login] + self._other_sessions(tr.chain, tr.attributed)
        g = nx.DiGraph()
        for login in logins:
            if g.number_of_nodes() >= self.settings.max_nodes:
                break
            self._add_subtree(g, login["proc"], 1 << 30, self.settings.max_nodes)
        self._to_one_clock(g)
        t = tr.poi.start
        # login shells ("-bash") only say a session began; the chain already shows that
        steps = [d["step"] for _, d in g.nodes(data=True)
                 if not d["step"].inherited and d["step"].login is None and not d["step"].command.startswith("-")
                 and t - window <= d["step"].start < t]
        steps.sort(key=lambda s: (s.start, s.node))
        return steps[-limit:]

    def _loss_notes(self, chain: list[Step], at: float) -> list[str]:
        """Warn when a host on the chain lost records while the chain was happening."""
        return [f"{lo['host']} lost {lo['count']} records ({lo['what'] or 'capture overrun'}) between "
                f"{clock(lo['since'])} and {clock(lo['ts'])}: links on that host in that time may be missing"
                for lo in self.store.losses(sorted({s.host for s in chain}), chain[0].start, at)]

    def _outage_notes(self, chain: list[Step], at: float) -> list[str]:
        """Times a host on the chain had no agent running: said, and the links across them
        marked inferred (outages.py decides)."""
        found = self.store.outages(sorted({s.host for s in chain}),
                                   min((s.start for s in chain if s.start > 0), default=at), at)
        if not found:
            return []
        outages.mark_links(chain, found)
        return outages.notes(chain, at, found)

    def _silent_notes(self, chain: list[Step]) -> list[str]:
        """A host on the chain whose agent stopped reporting: what happened there since is missing."""
        if self._inventory is None:
            self._inventory = {h["host"]: h for h in self.store.inventory()}
        now = time.time()
        notes = []
        for host in dict.fromkeys(s.host for s in chain):
            seen = (self._inventory.get(host) or {}).get("seen_at")
            if seen is not None and now - seen > self.settings.silent_after:
                notes.append(f"{host} has been silent since {clock(seen)} ({format_duration(now - seen)}): its agent "
                             "may be down, so what happened there since is missing")
        return notes

    def _to_one_clock(self, graph: nx.DiGraph) -> None:
        """Put every step's time on the collector's clock, so that gaps across hosts and their
        order are right however far apart the hosts' clocks are."""
        for _, data in graph.nodes(data=True):
            step = data["step"]
            if step.inherited and step.start == 0.0:
                continue
            step.start += self._offset(step.host)

    def _chain(self, proc: Proc, at: float, image: Image | None) -> tuple[list[Step], list[str]]:
        """Steps from the origin to the point of interest, across hosts."""
        segments: list[list[Step]] = []
        notes: list[str] = []
        seen_logins: set[int] = set()
        cur, t, poi_image = proc, at, image
        came_by: HopCandidate | None = None            # the hop that brought the walk to cur
        for _ in range(MAX_HOPS):
            steps, login = self._walk_host(cur, t, poi_image)
            segments.append(steps)
            poi_image = None
            if not login or login["id"] in seen_logins:
                break
            seen_logins.add(login["id"])
            hop, inferred, note = self._hop(login)
            if hop is None:
                if note:
                    notes.append(note)
                break
            steps[0].edge, steps[0].inferred, steps[0].note = "ssh", inferred, note
            asked = self._shared_master(cur, steps, login, hop, came_by)
            cur, t, came_by = self.store.proc(hop.proc), hop.ts - hop.shift, hop
            if asked:                                   # over an ssh master: on from who asked it
                (cur, t), came_by = asked, None
        chain = [s for seg in reversed(segments) for s in seg]
        for i in range(1, len(chain)):
            if chain[i].edge in ("login", "ssh") and chain[i].login:
                continue
            if chain[i].inferred:
                continue
            chain[i].edge, chain[i].note = stitch.link(
                chain[i - 1], chain[i], before=chain[i - 2] if i >= 2 else None,
                after=chain[i + 1] if i + 1 < len(chain) else None, last=i == len(chain) - 1)
        for i in range(1, len(chain)):
            entered = stitch.namespace_change(chain[i - 1], chain[i])
            if entered:
                chain[i].note = f"{chain[i].note}; {entered}" if chain[i].note else entered
        if chain[0].login:
            chain[0].edge = "login"
            chain[0].inferred = False
            chain[0].note = _login_note(chain[0].login)
        return chain, notes

    def _walk_host(self, proc: Proc, t: float, poi_image: Image | None):
        """Walk up one host from proc until a login. Returns (steps top-down, login or None)."""
        rev: list[Step] = []
        login = None
        p = proc
        first = True
        walked: list[tuple[Proc, list[Image]]] = []     # bottom-up: the processes this walk saw
        for _ in range(MAX_DEPTH):
            images = [im for im in self.store.images(p.id) if im.ts <= t]
            walked.append((p, images))
            login = self.store.login_of(p.id)
            if login:
                login = self._weighed_login(p, login, walked)
            if first and poi_image is not None:
                images = [im for im in images if im.ts <= poi_image.ts]
            if images:
                creds = self.store.creds(p.id)
                # each image is who the process was until just before its next exec (or until
                # t): the exec of a setuid program like sudo belongs to the new image, not the old
                ends = [im.ts - 1e-6 for im in images[1:]] + [t]
                for im, until in reversed(list(zip(images, ends))):
                    rev.append(self._step(p, im, until=until, creds=creds))
            elif login or first:
                inherited = self._inherited_image(p)
                rev.append(self._step(p, inherited, inherited=True, at=p.fork_ts or t, until=t,
                                      creds=self.store.creds(p.id)))
            if login:
                rev[-1].login = login
                rev[-1].user = login["user"]
                break
            first = False
            parent = self.store.proc(p.parent) if p.parent is not None else None
            if parent is None or parent.pid == 1 or p.pid == 1:
                # init starts every service: a chain that reaches it ends at the service
                login = self._session_login(p, parent, walked, rev)
                break
            t = p.fork_ts if p.fork_ts is not None else (images[0].ts if images else t)
            p = parent
        rev.reverse()
        return rev, login

    def _weighed_login(self, p: Proc, login: dict[str, Any], walked: list[tuple[Proc, list[Image]]]) -> dict[str, Any]:
        """The login record of p, with `doubt` (stitch.login_doubt) when p has other records naming
        someone else, or the session's processes below it on this walk carry another login uid."""
        records = self.store.logins_of(p.id)
        below = next((im.auid for _, images in reversed(walked[:-1]) for im in images
                      if im.auid not in (None, AUID_UNSET)), None)
        doubt = stitch.login_doubt(login, records, below, self._name(p.host_id, below))
        return {**login, "doubt": doubt, "records": records} if doubt else login

    def _session_login(self, p: Proc, parent: Proc | None, walked: list[tuple[Proc, list[Image]]],
                       rev: list[Step]):
        """The parent chain breaks at p without a login: join the login of the kernel's audit
        session, taken from the process nearest the break that has one (a restarted agent's
        first record of a process may lack it while its children carry it). The login must
        share the session's boot and loginuid and have begun before that process started:
        never "who is logged in now". Where a session id may name two sessions (the auditd
        source, which cannot always tell boots apart: session_ids_may_repeat) it must also not have
        ended (its process exited) before the session's processes here began, as such an id
        names a login long over; on an agent's boot it may have ended - nohup'd work outlives
        the logout, and the session id still says whose it is."""
        carrier, image = next(((q, im) for q, images in reversed(walked) for im in images
                               if im.ses not in (None, AUID_UNSET) and im.auid != AUID_UNSET),
                              (None, None))
        if carrier is None:
            return None
        began = carrier.fork_ts if carrier.fork_ts is not None else image.ts
        # the walked processes descend from the one at the break: the earliest known start is
        # when the session was, at the latest, running here
        first = min((q.fork_ts if q.fork_ts is not None else images[0].ts for q, images in walked
                     if q.fork_ts is not None or images), default=began)
        logins = [lg for lg in self.store.logins_by_session(p.boot, image.ses)
                  if self._began_by(lg, began, p.boot) and self._same_account(carrier, image.auid, lg)
                  and not (self.session_ids_may_repeat(p.boot) and self._ended_before(lg, first))]
        if not logins:
            return None
        # a record dated by the process's start is the session's own; one admitted only by the
        # late-line allowance (_began_by) stands in when there is none, never over it
        on_time = [lg for lg in logins if lg["ts"] <= began + 1]
        pool = on_time or logins
        login = pool[-1]
        named = {(lg["user"], lg.get("key_fp")) for lg in pool}
        if len(named) > 1:
            # one audit session, two logins naming different people: one record is not what sshd
            # wrote for it (a forged line, a reused pid read late, an unseen reboot), and which
            # one the time of day cannot tell - the later is not more likely the session's own
            said = "; ".join(f"{lg['user']}{' with key ' + lg['key_fp'] if lg.get('key_fp') else ''} at "
                             f"{clock(lg['ts'])}" for lg in pool)
            login = {**login, "records": pool, "doubt": (
                f"audit session {image.ses} has {len(pool)} login records naming different logins ({said}): a "
                "session has one login, so a log line anyone can write may be one of them, and which is its "
                "own is not known")}
        lproc = self.store.proc(login["proc"])
        top = self._step(lproc, self._inherited_image(lproc), inherited=True, at=login["ts"])
        top.login, top.user = login, login["user"]
        if parent is None:
            why = "its parent was not recorded"
        elif p.pid == 1:
            why = "it is init"
        else:
            why = "its parent is init: it was detached or its parent exited"
        of = f" (of pid {carrier.pid})" if carrier.id != p.id else ""
        rev[-1].inferred = True
        rev[-1].edge = "fork"
        rev[-1].note = (f"inferred: the parent chain breaks at pid {p.pid} ({why}); joined to "
                        f"{login['user']}'s login by audit session {image.ses}{of}")
        rev.append(top)
        return login

    def _began_by(self, login: dict[str, Any], t: float, boot: int) -> bool:
        """Whether a login that shares a process's audit session may be that session's login
        by time: it began by t (plus a second of clock rounding). On an agent's boot a session id
        names one session only, and the agent dates a login when it reads sshd's log line - which
        may come seconds after the session's first processes (journald under load) - so there
        the login may be dated up to LATE_LOGIN_LINE after. Not more: the login's session id is
        read from /proc when its line is read, and a much later line may name a reused pid."""
        late = 1.0 if self.session_ids_may_repeat(boot) else LATE_LOGIN_LINE
        return login["ts"] <= t + late

    def session_ids_may_repeat(self, boot: int) -> bool:
        """Whether one session id may name two sessions on this boot: an agent names a boot by
        the kernel's boot id, whose session ids never repeat (a counter of 2^32); the auditd
        source names its boots by the reboots it sees, and one it did not see joins two boots."""
        name = self._boots.get(boot)
        if name is None:
            name = self._boots[boot] = self.store.boot_name(boot)
        return name.startswith(AUDIT_BOOT_PREFIX)

    def _ended_before(self, login: dict[str, Any], t: float) -> bool:
        """Whether the login's process (sshd's, which lives as long as the connection) had
        exited before t."""
        ended = self.store.proc(login["proc"]).exit_ts
        return ended is not None and ended < t

    def _candidates(self, chain: list[Step]) -> list[tuple[int, stitch.Candidate]]:
        """Logins that evidence about *this* chain's processes points at, each scored (see
        stitch.rank_candidates): the audit session of any process on the chain (a login of that
        session that began before the process did), its login uid (the login's account), and its
        start against the logins open then on that host's boot. Never "who is logged in now":
        a login that began after the chain's origin started is no candidate. A login whose
        account contradicts the processes' login uid is left out: the kernel says it is not theirs."""
        found: dict[int, list] = {}                 # login id -> [score, login, evidence]

        def add(lg: dict[str, Any], score: int, why: str) -> None:
            entry = found.setdefault(lg["id"], [0, lg, []])
            if why not in entry[2]:
                entry[0] += score
                entry[2].append(why)

        # the origin's host only: past an ssh hop the processes are that login's, already on the chain
        order = list(dict.fromkeys(s.proc for s in stitch.origin_segment(chain)))
        procs = self.store.procs(order)
        carried = [(procs[pid], im) for pid in order for im in self.store.images(pid)]
        auids = {(p.host_id, im.auid) for p, im in carried if im.auid not in (None, AUID_UNSET)}
        if not auids:
            return []                               # a service: no session, nothing points at anyone
        began = {p.id: p.fork_ts if p.fork_ts is not None else min((im.ts for q, im in carried if q.id == p.id),
                                                                    default=None) for p in procs.values()}
        sessions: dict[tuple[int, int], Proc] = {}  # (boot, ses) -> the first process carrying it
        for p, im in carried:
            if im.ses in (None, AUID_UNSET) or im.auid == AUID_UNSET or began[p.id] is None \
                    or (p.boot, im.ses) in sessions:
                continue
            sessions[(p.boot, im.ses)] = p
            first = min((b for b in began.values() if b is not None), default=began[p.id])
            for lg in self.store.logins_by_session(p.boot, im.ses):
                if self._began_by(lg, began[p.id], p.boot) and self._same_account(p, im.auid, lg):
                    if not (self.session_ids_may_repeat(p.boot) and self._ended_before(lg, first)):
                        add(lg, 4, f"same audit session {im.ses} as pid {p.pid}")
                        continue
                    # over before the chain began here, on a boot whose ids may repeat: the id given
                    # again (a reboot the source did not mark), or work left running after logout -
                    # weak, and said so (_session_login does not join it)
                    ended = self.store.proc(lg["proc"]).exit_ts
                    add(lg, 1, f"same audit session {im.ses} as pid {p.pid}, but this login ended "
                               f"{format_duration(first - ended)} before the chain's first process here began: "
                               "the id may have been given again (a reboot), or the work outlived the logout")
        # "then" is when the first process carrying a login uid began (a cron job, not the cron
        # daemon started at boot; the top of a broken chain)
        origin = next(p for p, im in carried if im.auid not in (None, AUID_UNSET))
        t0 = began[origin.id]
        for lg in self.store.logins_open(origin.boot, t0, t0 - OPEN_LOGIN_HORIZON):
            # open then, and its account is the processes' login uid: else the kernel says it is not theirs
            if any(host == origin.host_id and self._is_account(host, auid, lg) for host, auid in auids):
                why = f"open on {origin.host} when pid {origin.pid} began ({clock(t0)})"
                if lg["end"] is None:
                    # no exit recorded: with the agent down since the login, it may have ended unseen
                    why += "".join(f", unless it ended while {o.host}'s agent was not running ({clock(o.since)} to "
                                   f"{clock(o.until)}): its end was not recorded"
                                   for o in self.store.outages([origin.host], lg["ts"], t0))
                add(lg, 1, why)
        for entry in list(found.values()):
            lg = entry[1]
            for host, auid in sorted(auids):
                if self._is_account(host, auid, lg):
                    add(lg, 2, f"loginuid {auid} is this login's account ({lg['user']})")
        out = []
        for score, lg, evidence in found.values():
            host = self.store.proc(lg["proc"]).host
            person = (self.identity.person_for_key(lg.get("key_fp"))
                      or self.identity.person_for_account(lg["user"], host))
            named = bool(person) or stitch.is_person_account(lg["user"], self.identity)
            out.append((score, stitch.Candidate(person=person or lg["user"], account=lg["user"], host=host,
                                                login_time=lg["ts"], source=lg.get("raddr"), key_fp=lg.get("key_fp"),
                                                evidence=evidence, named=named)))
        return out

    def _is_account(self, host_id: int, auid: int, login: dict[str, Any]) -> bool:
        """The login is to the account of login uid `auid` - by uid, else by the host's name for it."""
        if login.get("uid") is not None:
            return login["uid"] == auid
        return self.store.user_name(host_id, auid) == login["user"]

    def _same_account(self, carrier: Proc, auid: int | None, login: dict[str, Any]) -> bool:
        """The process's loginuid is the login's account (by uid when the login names one,
        else by the name the host gives that uid; an unrecorded or unnamed uid cannot disagree)."""
        if auid is None:
            return True
        if login.get("uid") is not None:
            return login["uid"] == auid
        name = self.store.user_name(carrier.host_id, auid)
        return name is None or name == login["user"]

    def _inherited_image(self, p: Proc) -> Image | None:
        """A process that never exec'd runs its parent's program: find that image."""
        if p.parent is None:
            return None
        images = self.store.images(p.parent)
        at = p.fork_ts if p.fork_ts is not None else float("inf")
        before = [im for im in images if im.ts <= at]
        return before[-1] if before else (images[0] if images else None)

    def _hop(self, login: dict[str, Any]):
        """The client side of an ssh login, if it ran on a host we watch: (candidate, inferred, note)."""
        s = self.settings
        # candidates' times are moved onto the login host's clock; the search window in the
        # store (raw times) is widened by the largest difference between measured clocks
        here = self._offset(self.store.proc(login["proc"]).host)
        spread = self._spread()
        t0, t1 = login["ts"] - s.hop_window - spread, login["ts"] + s.clock_skew + spread
        exact = [c for c in (self._candidate(c, here) for c in self.store.connects_from(
            login["raddr"], login["rport"], t0, t1)) if self._may_be_client(c, login, exact=True)]
        by_address: list[HopCandidate] = []
        hosts = [] if exact else self.store.hosts_with_addr(login["raddr"])
        if hosts and login.get("laddr"):
            by_address = [c for c in (self._candidate(c, here) for c in self.store.connects_to(
                login["laddr"], login.get("lport"), t0, t1)) if c.host_id in hosts
                and self._may_be_client(c, login, exact=False)]
        hit, inferred, note = stitch.pick_hop(login, exact, by_address, s.clock_skew)
        if hit is not None:
            # the client's agent down between its connect and the login: whether that connection
            # still stood - or ended unseen and another took its port - was not recorded
            down = self.store.outages([hit.host], hit.ts - hit.shift, login["ts"] - hit.shift)
            if down:
                inferred = True
                note = (("" if note.startswith("inferred: ") else "inferred: ") + note
                        + "".join(f"; {o.host}'s agent was not running from {clock(o.since)} to {clock(o.until)}, "
                                  "between the connect and the login: the connection may have ended unseen "
                                  "and another have taken its port" for o in down))
        if hit is None and hosts:
            names = ", ".join(sorted(self.store.host_names(hosts)))
            note = (f"the login as {login['user']} came from {login['raddr']}, an address of {names}, but no "
                    "matching ssh connection was recorded there: the chain may go on from that host")
            down = self.store.outages(sorted(self.store.host_names(hosts)), t0, login["ts"])
            note += "".join(f"; {o.host}'s agent was not running from {clock(o.since)} to {clock(o.until)}"
                            for o in down)
        return hit, inferred, note

    def _may_be_client(self, c: HopCandidate, login: dict[str, Any], exact: bool) -> bool:
        """Whether connect c may be the client side of this login, by what is known of both:
        - its client process had not exited before the login (an ssh client holds its
          connection for the whole session; `ssh -f` backgrounds only after logging in);
        - no other login from its client address and port came after it: the kernel reuses
          ephemeral ports, and this login's own connect may be lost (clocks may differ by the
          skew, so a port reused that soon leaves the hop unfound, never wrong);
        - by address only: its local port, when recorded at the login's own client address
          (nothing translated between), is the login's client port - else it is another
          connection, not "a port not recorded"."""
        s = self.settings
        ended = self.store.proc(c.proc).exit_ts
        if ended is not None and ended + c.shift < login["ts"] - s.clock_skew:
            return False
        if exact:
            return not self.store.login_from(login["raddr"], login["rport"], c.ts - s.clock_skew, login["ts"] - 1e-6,
                                             to=(c.raddr, login.get("laddr")))
        if c.laddr == login["raddr"] and c.lport and c.lport != login["rport"]:
            return False
        # a connect that is exactly another login's client is that login's, not a guess for this one
        return not self.store.login_from(c.laddr, c.lport, c.ts - s.clock_skew, c.ts + s.hop_window,
                                         to=(c.raddr, login.get("laddr")))

    def _candidate(self, conn: dict[str, Any], here: float = 0.0) -> HopCandidate:
        proc = self.store.proc(conn["proc"])
        shift = self._offset(proc.host) - here
        return HopCandidate(proc=conn["proc"], ts=conn["ts"] + shift, laddr=conn["laddr"], lport=conn["lport"],
                            raddr=conn["raddr"], rport=conn["rport"], host=proc.host, host_id=proc.host_id,
                            shift=shift)

    # --- ssh connection sharing: who asked a master connection for a session (sshmux.py) ------

    def _shared_master(self, cur: Proc, steps: list[Step], login: dict[str, Any], hop: HopCandidate,
                       came_by: HopCandidate | None) -> tuple[Proc, float] | None:
        """The chain on this host came through a channel of an ssh master connection - the
        login's client (`hop`) is an ssh that accepted mux clients on its control socket -:
        who asked the master for it. Returns where the chain goes on - the asker's ssh and its
        connect to the socket - when one client did (sshmux.pair); else None, and the chain
        goes on to the master as before. Either way the hop's step says so, its login is marked
        `over_master` (stitch: no "corroborated" by the master's key), and self._carried keeps
        what trace() makes of it (_carried_sessions)."""
        if self._mux_depth > 1:
            return None                     # a side chain's own masters are not followed
        found = self._master_of(hop)
        if found is None:
            return self._shared_forward(cur, steps, login, hop, came_by)
        master, uconns = found
        chans = self._channels(cur, login, came_by)
        if chans is None:
            return None
        target, channels = chans
        clients = self._master_clients(uconns, hop.shift)
        argv = self._argv_at(master, None)
        s = self.settings
        pairing = sshmux.pair(channels, [c for c, _ in clients], target, own_first=sshmux.opens_own_channel(argv),
                              rtt=s.mux_rtt, skew=s.mux_skew, opened=login["ts"])
        if pairing.own:
            return None                     # the master's own session: its chain is the master's
        start = master.fork_ts if master.fork_ts is not None else login["ts"] - hop.shift
        starter = self._side_chain(master, start + 1e-6)[1]
        asked = [pairing.asker] if pairing.asker else pairing.candidates
        seen = {c.proc: u for c, u in clients}
        members = [self._mux_member(c, seen[c.proc]) for c in asked]
        where = f"{_whose(starter, 'master connection')} (pid {master.pid} on {master.host})"
        by = f"{_whose(members[0].who, 'ssh')} (pid {members[0].pid})" if pairing.asker else None
        path = next((u["path"] for u in uconns if u.get("path")), None)
        self._carry(_Carried(step=steps[0], master=master, path=path, starter=starter, pairing=pairing,
                             clients=members, where=where, by=by),
                    f"over {where}, the master's login, not a new one", "the master's connection",
                    f"asked for by {by}", "which of its clients asked for this session is not known")
        if pairing.asker is None:
            return None
        proc = self.store.proc(pairing.asker.proc)
        return proc, seen[proc.id]["since"]

    def _carry(self, c: _Carried, over: str, connection: str, known: str, unknown: str) -> None:
        """Mark the hop's step as carried by a master or a forward - inferred, with who asked (or
        that it is not known), and `over_master` so no key on it corroborates - and keep `c` for
        trace() to make a SharedSession. The hop's own evidence (its connection seen on both
        hosts) stays, after what it carried."""
        step = c.step
        was = f"; {connection}: {step.note.removeprefix('inferred: ')}" if step.note else ""
        step.edge, step.inferred = "ssh", True
        asked = f"{known}, " if c.by else f"{unknown}: "
        step.note = f"inferred: {over}; {asked}{c.pairing.why}{was}"
        step.login = {**step.login, "over_master": {"master": c.where, "asked_by": c.by, "kind": c.kind}}
        self._carried.append(c)

    def _shared_forward(self, cur: Proc, steps: list[Step], login: dict[str, Any], hop: HopCandidate,
                        came_by: HopCandidate | None) -> tuple[Proc, float] | None:
        """The chain on this host is a TCP connect by the login's session process (a direct-tcpip
        channel) and the login's client is an ssh with local forwards (-D, -L, DynamicForward,
        LocalForward): whoever reached a forwarded port asked for it, not necessarily the
        forwarder's owner. Paired as a master's -W channels are (sshmux.pair), the forward's
        clients being the recorded connects to its ports on the client's host; the rest as
        _shared_master."""
        client = self.store.proc(hop.proc)
        argv = self._argv_at(client, None)
        ports = sshmux.forwarded_ports(argv)
        if not ports:
            return None
        chans = self._channels(cur, login, came_by)
        if chans is None or chans[0].kind != sshmux.TCP:
            return None                     # a session of the forwarder's own (its shell, its command)
        target, channels = chans
        channels = [c for c in channels if c.kind == sshmux.TCP]
        s = self.settings
        clients = self._forward_clients(client, ports, hop, target)
        pairing = sshmux.pair(channels, [c for c, _ in clients], target, own_first=False,
                              rtt=s.mux_rtt, skew=s.mux_skew)
        if pairing.asker is not None:
            pairing.why = "its connect to the forwarded port fits the channel, in its turn"
        if not clients:
            pairing.why = ("no connect to its forwarded port was recorded near the channel, and any local user "
                           "(or, bound beyond localhost, anyone who reaches it) may use a forward")
        start = client.fork_ts if client.fork_ts is not None else login["ts"] - hop.shift
        starter = self._side_chain(client, start + 1e-6)[1]
        asked = [pairing.asker] if pairing.asker else pairing.candidates
        seen = {(c.proc, c.ts): u for c, u in clients}
        members = [self._mux_member(c, seen[(c.proc, c.ts)], role=USED) for c in asked]
        forward = sshmux.forward_said(argv)
        where = f"{_whose(starter, 'ssh ' + forward + ' forward')} (pid {client.pid} on {client.host})"
        by = (f"{_whose(members[0].who, _program(members[0].command))} (pid {members[0].pid})"
              if pairing.asker else None)
        path = ", ".join(_port_said(b, p) for b, p in ports)
        self._carry(_Carried(step=steps[0], master=client, path=path, starter=starter, pairing=pairing,
                             clients=members, where=where, by=by, kind=SSH_FORWARD),
                    f"through {where}, its login, not a new one", "the forward's connection",
                    f"used by {by}", "who connected to the forwarded port for this channel is not known")
        if pairing.asker is None:
            return None
        proc = self.store.proc(pairing.asker.proc)
        return proc, seen[(pairing.asker.proc, pairing.asker.ts)]["since"]

    def _forward_clients(self, client: Proc, ports: list[tuple[str | None, int]], hop: HopCandidate,
                         target: sshmux.Channel) -> list[tuple[sshmux.MuxClient, dict]]:
        """The recorded connects to a forward's ports near its channel, as sshmux clients asking
        for a TCP channel (times on the server's clock): on the client's host to loopback or its
        own address, and from anywhere to a bound address. The forwarder and its `ssh -f` forks
        are no client of their own forward."""
        s = self.settings
        reach = sshmux.RADIUS * (s.mux_rtt + s.mux_skew) + s.mux_rtt + s.mux_skew + self._spread()
        at = target.ts - hop.shift
        own = {client.id, *(k.id for k in self.store.procs(self.store.children([client.id])).values()
                            if not self.store.images(k.id))}
        here = self._offset(self.store.proc(target.proc).host)
        out: dict[tuple[int, float], tuple[sshmux.MuxClient, dict]] = {}
        for bind, port in ports:
            addrs = {"127.0.0.1", "::1", "localhost"} if bind in (None, "localhost") else {bind}
            if bind in ("*", "", "0.0.0.0", "::"):
                addrs = {"127.0.0.1", "::1", hop.laddr}
            for addr in addrs:
                if not addr:
                    continue
                for c in self.store.connects_to(addr, port, at - reach, at + reach):
                    if c["proc"] in own:
                        continue
                    p = self.store.proc(c["proc"])
                    loop = addr in ("127.0.0.1", "::1", "localhost") or addr.startswith("127.")
                    if loop and p.host_id != client.host_id:
                        continue            # another host's own loopback: not this forward
                    shift = self._offset(p.host) - here
                    until = p.exit_ts + shift if p.exit_ts is not None else None
                    mc = sshmux.MuxClient(proc=p.id, pid=p.pid, ts=c["ts"] + shift, until=until,
                                          argv=tuple(self._argv_at(p, c["ts"])), asks=sshmux.TCP)
                    out[(p.id, mc.ts)] = (mc, {"since": c["ts"]})
        return list(out.values())

    def _master_of(self, hop: HopCandidate) -> tuple[Proc, list[dict[str, Any]]] | None:
        """The ssh master behind a hop's client, and the unix connections it accepted from the
        client's start on: the client process itself, or - `ssh -f`, ControlPersist - the fork it
        left running in the background, which accepts. A master by its own arguments whose
        clients were not recorded comes with none; any other ssh is no master (None)."""
        client = self.store.proc(hop.proc)
        since = client.fork_ts if client.fork_ts is not None else hop.ts - hop.shift - self.settings.hop_window
        kids = self.store.procs(self.store.children([client.id]))
        # a child that ran another program is not the master; one that did not is ssh -f's fork
        forks = [k for k in sorted(kids.values(), key=lambda k: k.id) if not self.store.images(k.id)]
        for p in [client, *forks]:
            # its channels may come any time the connection stands: every client from its start on
            uconns = first_per_client(u for u in self.store.unix_clients(p.id, since, float("inf"))
                                      if u["client"] is not None)
            if uconns:
                return p, uconns
        if sshmux.is_master(self._argv_at(client, None)):
            # a master by its own arguments whose clients were not recorded: its sessions but the
            # first may be anyone's who reached its socket
            return (forks[-1] if forks else client), []
        return None

    def _channels(self, cur: Proc, login: dict[str, Any], came_by: HopCandidate | None):
        """The channel of the login's connection this chain came through, and all of that
        connection's channels: (target, channels) or None. The login process's child is the
        session process; its forks are sessions, its TCP connects `-W`/`-J` channels."""
        path, p = [cur], cur
        for _ in range(MAX_DEPTH):
            if p.id == login["proc"] or p.parent is None:
                break
            p = self.store.proc(p.parent)
            path.append(p)
        if path[-1].id != login["proc"]:
            return None
        if len(path) >= 3:
            session = path[-2]
        elif len(path) == 2 and came_by is not None and came_by.proc == cur.id:
            session = cur
        else:
            return None
        kids = self.store.procs(self.store.children([session.id]))
        channels = []
        for k in kids.values():
            # a session found already running (the agent's /proc snapshot) has no fork time: its
            # first image's, which is no earlier, pairs it with no client rather than a wrong one
            images = self.store.images(k.id) if k.fork_ts is None else []
            began = k.fork_ts if k.fork_ts is not None else (images[0].ts if images else None)
            if began is not None:
                channels.append(sshmux.Channel(sshmux.SESSION, began, k.id, k.pid, k.exit_ts))
        connects = self.store.connects_of(session.id)
        channels += [sshmux.Channel(sshmux.TCP, c["ts"], session.id, session.pid) for c in connects]
        if len(path) >= 3:
            target = next((c for c in channels if c.kind == sshmux.SESSION and c.proc == path[-3].id), None)
        else:
            at = came_by.ts - came_by.shift
            target = min((c for c in channels if c.kind == sshmux.TCP), key=lambda c: abs(c.ts - at), default=None)
        return (target, channels) if target is not None else None

    def _argv_at(self, p: Proc, t: float | None) -> list[str]:
        """What p was running at t (None: its latest image), or its parent's program if it never exec'd."""
        images = self.store.images(p.id)
        before = [im for im in images if t is None or im.ts <= t] or images
        im = before[-1] if before else self._inherited_image(p)
        return list(im.argv) if im else []

    def _master_clients(self, uconns: list[dict[str, Any]], shift: float) -> list[tuple[sshmux.MuxClient, dict]]:
        """The master's accepted connections as sshmux clients, times moved onto the server's clock."""
        out = []
        for u in uconns:
            p = self.store.proc(u["client"])
            ended = self._held_until(p)
            until = ended + shift if ended is not None else None
            out.append((sshmux.MuxClient(proc=p.id, pid=p.pid, ts=u["since"] + shift, until=until,
                                         argv=tuple(self._argv_at(p, u["since"]))), u))
        return out

    def _held_until(self, p: Proc) -> float | None:
        """When a client's hold on its connection ended: its exit, or - `ssh -f` forks and the
        parent exits - the last exit of its forks that ran no program of their own; None while
        any of them may still run (no exit recorded)."""
        held = [p, *(k for k in self.store.procs(self.store.children([p.id])).values()
                     if not self.store.images(k.id))]
        ends = [q.exit_ts for q in held]
        return None if None in ends else max(ends)

    def _side_chain(self, p: Proc, t: float) -> tuple[list[Step], Attribution]:
        """Another process's own chain and attribution (a master's, a mux client's), walked as
        any command's is, without disturbing the trace being built."""
        self._mux_depth += 1
        try:
            return self._own_chain(p, t, None)
        finally:
            self._mux_depth -= 1

    def _mux_member(self, c: sshmux.MuxClient, u: dict[str, Any], role: str = ASKED) -> SessionClient:
        p = self.store.proc(c.proc)
        chain, who = self._side_chain(p, u["since"])
        off = self._offset(p.host)
        image = next((im for im in reversed(self.store.images(p.id)) if im.ts <= u["since"]), None)
        return SessionClient(role=role, proc=p.id, host=p.host, pid=p.pid,
                             command=image.cmd if image else " ".join(c.argv), since=u["since"] + off,
                             until=p.exit_ts + off if p.exit_ts is not None else None, who=who,
                             summary=stitch.summary(chain, who))

    def _carried_sessions(self, chain: list[Step], who: Attribution) -> tuple[Attribution, list[SharedSession]]:
        """The ssh masters that carried this chain (_shared_master) as shared sessions, and the
        attribution they make (docs/attribution.md, "ssh connection sharing"): the asker's person,
        inferred, with a note; or - no single asker - person unknown, every possible asker and
        the master's owner the candidates."""
        shared = []
        for rec in self._carried:
            idx = next((i for i, s in enumerate(chain) if s is rec.step), None)
            if idx is None:
                continue
            asker = rec.clients[0] if rec.pairing.asker else None
            forward = rec.kind == SSH_FORWARD
            if forward:
                note = (f"through {rec.where}, used by {rec.by}" if asker else
                        f"through {rec.where}; who connected to its forwarded port for this hop is not known")
            else:
                note = (f"over {rec.where}, asked for by {rec.by}" if asker else
                        f"over {rec.where}; which of its clients asked for this session is not known")
            shared.append(SharedSession(kind=rec.kind, host=rec.master.host, proc=rec.master.id,
                                        pid=rec.master.pid, path=rec.path, step=idx, starter=rec.starter,
                                        clients=rec.clients, note=note))
            # past a forward the asker is paired by time only: a later hop's key of another person
            # is as strong as that pairing, so it unsettles the answer rather than sit under it
            against = self._keys_against(chain[idx + 1:], who) if forward and asker else []
            if asker and not against:
                who.notes.append(note)
                if who.known:
                    who.confidence = stitch.INFERRED
                continue
            cands = [stitch.Candidate(
                person=c.who.user if c.who.known else (c.who.account or "?"), account=c.who.account or "?",
                host=c.who.host or c.host, login_time=c.who.login_time or c.since or 0.0, source=c.who.source,
                key_fp=c.who.key_fp, named=c.who.known,
                evidence=[(f"its {_program(c.command)} (pid {c.pid} on {c.host}) connected to the forwarded port "
                           f"{rec.path} at {clock(c.since)}" if forward else
                           f"its ssh (pid {c.pid} on {c.host}) used the master's control socket"
                           f"{' ' + rec.path if rec.path else ''} from {clock(c.since)}")
                          + (f" to {clock(c.until)}" if c.until is not None else "")]) for c in rec.clients]
            cands += [stitch.Candidate(
                person=person, account=lg["user"], host=step.host, login_time=lg["ts"], source=lg.get("raddr"),
                key_fp=lg.get("key_fp"), evidence=[f"the key used for the later hop to {lg['user']}@{step.host} "
                                                   f"belongs to {person}"]) for step, lg, person in against]
            st = rec.starter
            cands.append(stitch.Candidate(
                person=st.user if st.known else (st.account or "?"), account=st.account or "?",
                host=st.host or rec.master.host, login_time=st.login_time or 0.0, source=st.source,
                key_fp=st.key_fp, named=st.known,
                evidence=[f"started the forward (pid {rec.master.pid} on {rec.master.host})" if forward else
                          f"started the master connection (pid {rec.master.pid} on {rec.master.host})"]))
            why = rec.pairing.why if not against else (
                f"{rec.by} used it by time, but the key used for the later hop to {against[0][1]['user']}@"
                f"{against[0][0].host} belongs to {against[0][2]}")
            how = (f"the hop came through {rec.where}, and {why}" if forward else
                   f"the session came over {rec.where}, and {rec.pairing.why}")
            kept = [n for n in who.notes if n.startswith("conflict")] if against else []
            who = Attribution(user=stitch.PERSON_UNKNOWN, host=rec.master.host, source=None, login_time=None,
                              how=how, account=st.account, notes=[note, *kept], confidence=stitch.UNKNOWN,
                              candidates=cands)
        return who, shared

    def _keys_against(self, later: list[Step], who: Attribution) -> list[tuple[Step, dict[str, Any], str]]:
        """The later logins on a chain whose key names a person other than `who`'s."""
        out = []
        for step in later:
            lg = step.login if step.edge in ("login", "ssh") else None
            if not lg or lg.get("over_master"):
                continue
            person = self.identity.person_for_key(lg.get("key_fp"))
            if person and person != (who.user if who.known else None):
                out.append((step, lg, person))
        return out

    def _name(self, host_id: int, uid: int | None) -> str | None:
        if uid is None or uid == AUID_UNSET:
            return None
        if uid == 0:
            return "root"               # the kernel's root, whatever the host's passwd names it
        key = (host_id, uid)
        if key not in self._names:
            self._names[key] = self.store.user_name(host_id, uid) or f"uid {uid}"
        return self._names[key]

    def _step(self, p: Proc, im: Image | None, inherited: bool = False, at: float | None = None,
              until: float | None = None, creds: list[dict[str, Any]] = ()) -> Step:
        """A chain step for an image of p. The effective user is the image's, unless p changed
        credentials (setuid without exec) between the image's start and `until`."""
        if im is None:
            return Step(node=f"{p.id}@?", proc=p.id, host=p.host, pid=p.pid, user="?", login_user=None,
                        command=f"pid {p.pid} (program not recorded)", argv=[], start=at or 0.0,
                        inherited=True)
        start = at if inherited and at is not None else im.ts
        euid = im.euid
        changed = [c for c in creds if start <= c["ts"] <= (until if until is not None else start)]
        if changed:
            euid = changed[-1]["euid"]
        return Step(node=image_node(p.id, im.ts) if not inherited else f"{p.id}@fork", proc=p.id, host=p.host,
                    pid=p.pid, user=self._name(p.host_id, euid) or "?",
                    login_user=self._name(p.host_id, im.auid), command=im.cmd, argv=im.argv, start=start,
                    cwd=im.cwd, exe=im.exe, tty=im.tty, container=im.container, pidns=im.pidns, inherited=inherited,
                    snapshot=im.snapshot and not inherited, login_uid=im.auid, ses=im.ses)

    # --- the graph -----------------------------------------------------------------------

    def _graph(self, chain: list[Step]) -> nx.DiGraph:
        g = nx.DiGraph()
        for i, step in enumerate(chain):
            role = "origin" if i == 0 else ("poi" if i == len(chain) - 1 else "chain")
            g.add_node(step.node, step=step, role=role, host=step.host)
            if i:
                g.add_edge(chain[i - 1].node, step.node, kind=step.edge, inferred=step.inferred,
                           note=step.note, chain=True)
        return g

    def _widen(self, g: nx.DiGraph, chain: list[Step], who: Attribution, scope: int) -> list[str]:
        """Add context: 1 = what the command started and the other commands of the chain's
        shells; 2 = the whole login sessions on the chain; 3 = the person's other sessions."""
        budget = self.settings.max_nodes
        truncated: list[str] = []
        poi = chain[-1]
        # the chain's other processes' children: those of the window scope 3 looks for other
        # sessions in - a daemon on the chain (cron, a CI runner) has a month's children, not context
        t = poi.start
        near = (t - CONTEXT_BEFORE, t + CONTEXT_AFTER)
        roots: list[tuple[int, int, tuple[float, float] | None]] = [(poi.proc, 1 << 30, None)]   # (proc, depth, window)
        if scope >= 1:
            roots += [(s.proc, 1, near) for s in chain[:-1] if not s.login]
        if scope >= 2:
            roots += [(s.proc, 1 << 30, None) for s in chain if s.login]
        if scope >= 3:
            roots += [(lg["proc"], 1 << 30, None) for lg in self._other_sessions(chain, who)]
        for root, depth, window in roots:
            if g.number_of_nodes() >= budget:
                truncated.append(f"stopped adding context at {budget} nodes")
                break
            self._add_subtree(g, root, depth, budget, window)
        return truncated

    def _other_sessions(self, chain: list[Step], who: Attribution) -> list[dict[str, Any]]:
        if not who.known:
            return []               # an unknown person has no other sessions to look for
        on_chain = {s.login["id"] for s in chain if s.login}
        t = chain[-1].start
        out = []
        for lg in self.store.logins_between(t - CONTEXT_BEFORE, t + CONTEXT_AFTER):
            if lg["id"] in on_chain:
                continue
            person = (self.identity.person_for_key(lg.get("key_fp"))
                      or self.identity.person_for_account(lg["user"], self.store.proc(lg["proc"]).host)
                      or (lg["user"] if not self.identity.is_shared(lg["user"]) else None))
            if person == who.user:
                out.append(lg)
        return out

    def _add_subtree(self, g: nx.DiGraph, root: int, depth: int, budget: int,
                     window: tuple[float, float] | None = None) -> None:
        """Descendants of root (to `depth` generations), one node per image, linked by fork and
        exec; with `window`, only the children that came to be in it."""
        placed: dict[int, list[tuple[float, str]]] = {}     # proc -> its nodes in time order
        frontier, level = [root], 0
        while frontier and g.number_of_nodes() < budget:
            procs = self.store.procs(frontier)
            images_of = self.store.images_of(frontier)
            for proc_id in frontier:
                p = procs[proc_id]
                parent_nodes = placed.get(p.parent, []) if level else []
                at = p.fork_ts if p.fork_ts is not None else float("inf")
                prev = next((n for ts, n in reversed(parent_nodes) if ts <= at), None)
                mine: list[tuple[float, str]] = []
                images = images_of.get(p.id, [])
                if not images:
                    # No exec of its own: it runs its parent's program; its children hang off
                    # whichever node already stands for it (a login), else off its parent's.
                    own = f"{p.id}@fork"
                    placed[p.id] = [(p.fork_ts or 0.0, own)] if own in g else (
                        [(ts, n) for ts, n in parent_nodes])
                    continue
                login = self.store.login_of(p.id) if level == 0 else None
                for im in images:
                    step = self._step(p, im)
                    if login and im is images[0]:
                        step.login, step.user = login, login["user"]
                    if step.node not in g:
                        if g.number_of_nodes() >= budget:
                            return
                        g.add_node(step.node, step=step, role="context", host=p.host)
                    if prev and prev != step.node and not g.has_edge(prev, step.node):
                        kind, note = stitch.link(g.nodes[prev]["step"], step)
                        g.add_edge(prev, step.node, kind=kind, inferred=False, note=note, chain=False)
                    prev = step.node
                    mine.append((im.ts, step.node))
                placed[p.id] = mine
            if level >= depth:
                break
            frontier = self.store.children(frontier, window)
            level += 1


def _starter_not_the_answer(tr: Trace, note: str, how: str, evidence: str) -> None:
    """The chain names who started the process, and that is not who the question asks for (a
    proxy's client, the other end of an accepted connection): person unknown, the chain's person
    (or its candidates) a candidate with `evidence`, the note first."""
    who = tr.attributed
    tr.attributed = stitch.Attribution(
        user=stitch.PERSON_UNKNOWN, host=who.host, source=None, login_time=None, how=how, account=who.account,
        notes=[note, *who.notes], confidence=stitch.UNKNOWN, candidates=_as_candidates(who, evidence))
    tr.notes.insert(0, note)
    tr.summary = stitch.summary(tr.chain, tr.attributed)


def _as_candidates(who: Attribution, evidence: str) -> list[stitch.Candidate]:
    """The logins an attribution stands for as candidates, `evidence` first: its person's login,
    else its own candidates; nothing when it named no login at all (a service)."""
    if who.known:
        return [stitch.Candidate(person=who.user, account=who.account or who.user, host=who.host or "?",
                                 login_time=who.login_time or 0.0, source=who.source, key_fp=who.key_fp,
                                 evidence=[evidence, who.how], named=True)]
    return [dataclasses.replace(c, evidence=[evidence, *c.evidence]) for c in who.candidates]


def _names_said(m: ConnMatch, peers: list[Peer], label: dict[str, tuple[str, str]]) -> list[str]:
    """What a person must know about a peer matched by an address a name stands for: the host
    recorded another name for it when it connected (an address several names share: a CDN, a
    load balancer), or the address is the name's only as resolved now, at question time."""
    out = []
    for p in peers:
        if p.addr not in label:
            continue
        name, source = label[p.addr]
        recorded = p.name if p.name != name else None
        if recorded and not any(fnmatch.fnmatchcase(recorded.lower(), n) for n in m.names):
            out.append(f"{p.addr} matched {name} by address ({source}), but the host recorded it as {recorded} "
                       "when it connected: an address several names share (a CDN, a load balancer) may have "
                       f"served {recorded}, not {name}")
        elif source in WEAKER:
            out.append(f"{p.addr} is {name} only as resolved now, at question time: the host recorded no name "
                       "when it connected, and the address may then have been another's (a moved endpoint, a CDN)")
    return out


def image_node(proc: int, ts: float) -> str:
    """The graph node of one exec of a process (Step.node), which renderers look up by."""
    return f"{proc}@{ts!r}"


@dataclass
class _Carried:
    """An ssh master found carrying a chain's session (Tracer._shared_master), until trace() makes
    it a SharedSession."""
    step: Step                      # the hop's step: the master connection's login on the server
    master: Proc
    path: str | None
    starter: Attribution
    pairing: sshmux.Pairing
    clients: list[SessionClient]
    where: str                      # "jim's master connection (pid 18 on host-a)"
    by: str | None                  # "bob's ssh (pid 38)": who asked, when one client did
    kind: str = SSH_MASTER          # or SSH_FORWARD: an ssh's port forward, `master` its ssh


def _port_said(bind: str | None, port: int) -> str:
    return f"{bind}:{port}" if bind else f"localhost:{port}"


def _program(command: str) -> str:
    """A client's program for a note: "nc" of "/usr/bin/nc -x localhost:1080 target 22"."""
    first = command.split()[0] if command.split() else ""
    return first.rsplit("/", 1)[-1] or "process"


def _whose(who: Attribution, thing: str) -> str:
    """A thing of a person in a note: "jim's ssh"; "the ssh of ec2-user (person unknown)" - an
    account is never said as a person."""
    if who.known:
        return f"{who.user}'s {thing}"
    return f"the {thing} of {who.account or 'an unknown account'} (person unknown)"


def _login_note(login: dict[str, Any]) -> str:
    parts = [f"ssh {login.get('method') or 'login'} as {login['user']} from {login['raddr']}:{login['rport']}"]
    if login.get("key_fp"):
        parts.append(f"key {login['key_fp']}")
    return ", ".join(parts)


def _relink_context(g: nx.DiGraph) -> None:
    """Context edges are named one at a time as the graph grows; once it is whole, name those
    at a sudo or su again with their neighbours, so `sudo -u ops` drawn around a chain reads
    "jim -> ops via sudo" as it does on the chain (stitch.link), not a stop at root."""
    for a, b, d in g.edges(data=True):
        prev, cur = g.nodes[a]["step"], g.nodes[b]["step"]
        if d["chain"] or d["kind"] in ("login", "ssh") or not (
                stitch.SWITCH_USER.get(cur.program) or stitch.SWITCH_USER.get(prev.program)):
            continue
        befores = list(g.predecessors(a))
        afters = [g.nodes[n]["step"] for n in g.successors(b) if g.nodes[n]["step"].user != cur.user]
        d["kind"], d["note"] = stitch.link(prev, cur, before=g.nodes[befores[0]]["step"] if len(befores) == 1 else None,
                                           after=afters[0] if len(afters) == 1 else None)


def _involves(tr: Trace, user: str) -> bool:
    """Does the trace involve `user` - its person (when one is named), its account, or a user on the chain?"""
    if (tr.attributed.known and tr.attributed.user == user) or tr.attributed.account == user:
        return True
    return any(s.user == user or s.login_user == user for s in tr.chain)
