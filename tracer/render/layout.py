"""Where everything goes in a trace picture: lanes, rows, boxes, links, labels.

A pure function of the Trace (no database, no matplotlib), so the picture's structure is
tested directly - every chain step has a box, every ssh hop crosses lanes, every
privilege change is labelled - and the drawing code (image.py) only paints it.

The picture reads top to bottom: one row per box, the causal chain in chain order, the
context that wider scopes add slotted in by time below the chain step it follows. One
lane (column) per host. Long runs of context commands collapse into one box that says
how many it stands for.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..destinations import endpoint
from ..stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, Step, privilege
from ..trace import Trace
from ..when import ago, clock, format_duration
from .confidence import account_said, candidate_short, confidence, person as person_of
from . import shared
from .text import printable

RUN_KEEP_HEAD, RUN_KEEP_TAIL = 2, 1      # a long run of context shows its first 2 and last 1
RUN_MAX = 4                              # runs longer than this collapse
MAX_ROWS = 48                            # past this, collapse harder: a picture, not a log
PRIVILEGE = ("sudo", "su", "setuid")
MAX_CANDIDATES = 5                       # the picture lists this many; the text and JSON list all
MAX_CLIENTS = 5                          # a shared session's clients drawn; past this, 4 and "+N more"
# characters that fit the side lane (image.py's fonts): the session box, an indented client box
SESSION_TITLE_W, SESSION_META_W, CLIENT_TITLE_W, CLIENT_META_W = 42, 50, 38, 44


@dataclass
class Box:
    id: str
    lane: int
    row: int
    role: str                 # origin | chain | poi | context | collapsed
    title: str                # first line: the command (shortened) or what the box stands for
    meta: str                 # second line: user and time, or where a login came from
    command: str = ""         # the full command line (for SVG/HTML tooltips later)
    count: int = 1            # how many processes a collapsed box stands for
    indent: bool = False      # context boxes sit indented under their parent
    members: list[str] = field(default_factory=list)   # a collapsed box's graph nodes, in time order


@dataclass
class Link:
    src: str
    dst: str
    kind: str                 # fork | exec | ssh | sudo | su | setuid
    chain: bool
    inferred: bool = False
    label: str | None = None  # ssh: "ssh as ec2-user", privilege: "ec2-user -> root via sudo"
    gap: str | None = None    # "3h 04m later"


@dataclass
class ClientBox:
    """A client of a shared session, stacked under its session box, with a link into it."""
    id: str                   # "shared:0:client:1"
    role: str                 # attached | injected | asked | more ("+3 more clients")
    row: int
    title: str                # "bob, attached 10:02–"
    meta: str                 # "tmux attach -t ops · pid 4242 on host-b"
    known: bool = True        # False: the client's person is unknown (drawn grey)
    command: str = ""


@dataclass
class SessionBox:
    """A tmux/screen server or ssh master (tracer/sharing.py), drawn beside the chain step it
    belongs to, in a lane of its own right of the hosts' lanes."""
    id: str                   # "shared:0"
    kind: str
    at: str                   # the chain box it is drawn beside
    row: int
    title: str                # "tmux server (pid 812) started by jim"
    meta: str                 # "on host-b · /tmp/tmux-1000/default"
    clients: list[ClientBox] = field(default_factory=list)
    known: bool = True        # False: who started it is unknown


@dataclass
class Layout:
    title: str
    headline: str             # who, how: "jim, via jump-box, sudo to root"
    subtitle: str
    lanes: list[str]
    boxes: list[Box]
    links: list[Link]
    person: str               # the badge over the origin
    collapsed: int = 0        # processes folded into collapsed boxes
    groups: int = 0           # how many collapsed boxes
    notes: list[str] = field(default_factory=list)
    confidence: str = OBSERVED  # observed | inferred | unknown: how the person is drawn
    confidence_label: str = ""  # "confidence: unknown", the header's badge
    candidates: list[str] = field(default_factory=list)   # unknown: who it could be, one short line each
    sessions: list[SessionBox] = field(default_factory=list)   # shared sessions, in the side lane

    @property
    def rows(self) -> int:
        last = max((b.row for b in self.boxes), default=-1)
        for ss in self.sessions:
            last = max([last, ss.row] + [c.row for c in ss.clients])
        return 1 + last

    @property
    def side(self) -> int:
        """The lane the shared sessions are drawn in: after the hosts' lanes (0 when none)."""
        return len(self.lanes) if self.sessions else 0

    @property
    def columns(self) -> int:
        return len(self.lanes) + (1 if self.sessions else 0)

    def box(self, box_id: str) -> Box:
        return next(b for b in self.boxes if b.id == box_id)


def short_command(argv: list[str], command: str, width: int) -> str:
    """`/usr/bin/aws eks ...` -> `aws eks ...`, cut at `width` with an ellipsis."""
    if argv:
        first = argv[0]
        head = os.path.basename(first) if first.startswith("/") else first
        text = " ".join([head, *argv[1:]])
    else:
        text = command
    return text if len(text) <= width else text[: width - 1] + "…"


def _step_box(step: Step, role: str, row: int, lane: int, now: float, width: int) -> Box:
    hhmmss = clock(step.start)[11:19]
    if step.login:
        lg = step.login
        title = f"ssh login as {lg['user']}"
        where = f"from {lg['raddr']}" if step.edge == "login" else (
            f"key {lg['key_fp'][:14]}…" if lg.get("key_fp") else f"from {lg['raddr']}")
        meta = f"{where} · {hhmmss}"
    else:
        title = short_command(step.argv, step.command, width)
        meta = f"{step.user} · {hhmmss}"
    if role == "poi":
        meta += f" · {ago(step.start, now)}"
    if step.inferred:
        meta += " · inferred"
    return Box(id=step.node, lane=lane, row=row, role=role, title=title, meta=meta, command=step.command)


def layout(tr: Trace, now: float, width: int = 34, expand: frozenset[str] = frozenset()) -> Layout:
    """`expand`: ids of collapsed groups ("group:<first member>") to show box by box instead."""
    g = tr.graph
    chain = tr.chain
    chain_ids = [s.node for s in chain]
    chain_index = {n: i for i, n in enumerate(chain_ids)}

    lanes: list[str] = []
    for s in chain:
        if s.host not in lanes:
            lanes.append(s.host)
    context = [n for n, d in g.nodes(data=True) if d["role"] == "context"]
    for n in sorted(context, key=lambda n: (g.nodes[n]["step"].start, n)):
        host = g.nodes[n]["host"]
        if host not in lanes:
            lanes.append(host)
    lane_of = {h: i for i, h in enumerate(lanes)}

    # Slot each context node below the chain step it follows: never above its chain
    # ancestor, never above a chain step that happened before it.
    starts = [s.start for s in chain]
    slots: dict[int, list[str]] = defaultdict(list)
    for n in context:
        step = g.nodes[n]["step"]
        anchor = _chain_ancestor(g, n, chain_index)
        by_time = max((i for i, t in enumerate(starts) if t <= step.start), default=-1)
        slots[max(anchor, by_time)].append(n)

    # Collapse long runs, harder if the picture would still be too tall.
    for keep_head, keep_tail, run_max in ((RUN_KEEP_HEAD, RUN_KEEP_TAIL, RUN_MAX), (1, 0, 1), (0, 0, 0)):
        items = {k: _collapse(g, v, lane_of, keep_head, keep_tail, run_max, expand) for k, v in slots.items()}
        rows = len(chain) + sum(len(v) for v in items.values())
        if rows <= MAX_ROWS:
            break

    boxes: list[Box] = []
    visible: dict[str, str] = {}       # graph node -> the box that shows it
    row = 0

    def place(slot: int):
        nonlocal row
        for item in items.get(slot, []):
            if isinstance(item, tuple):              # a collapsed group
                lane, members = item
                gid = f"group:{members[0]}"
                boxes.append(Box(id=gid, lane=lane, row=row, role="collapsed",
                                 title=f"+{len(members)} more commands",
                                 meta=_programs(g, members), count=len(members), indent=True,
                                 members=list(members)))
                for m in members:
                    visible[m] = gid
            else:
                step = g.nodes[item]["step"]
                box = _step_box(step, "context", row, lane_of[step.host], now, width - 3)
                box.indent = True
                boxes.append(box)
                visible[item] = item
            row += 1

    place(-1)
    for i, step in enumerate(chain):
        role = "origin" if i == 0 else ("poi" if i == len(chain) - 1 else "chain")
        boxes.append(_step_box(step, role, row, lane_of[step.host], now, width))
        visible[step.node] = step.node
        row += 1
        place(i)

    links = _links(tr, visible)
    if tr.connections is not None:
        row = _connection_boxes(tr, lanes, boxes, links, row, width)
    collapsed = sum(b.count for b in boxes if b.role == "collapsed")
    groups = sum(1 for b in boxes if b.role == "collapsed")
    title, headline = _titles(tr, width + 14)
    when = tr.change["ts"] if tr.change else tr.poi.start
    sub = [f"{clock(when)} ({ago(when, now)})"]
    if tr.attributed.source:
        sub.append(f"from {tr.attributed.source}")
    sub.append(f"{len(chain)} steps")
    if tr.scope:
        extra = g.number_of_nodes() - len(chain)
        sub.append(f"scope {tr.scope}: +{extra} around")
    notes = list(tr.truncated)
    if collapsed:
        notes.append(f"collapsed {collapsed} commands into {groups} group{'s' if groups > 1 else ''}")
    who = tr.attributed
    level = confidence(tr)
    if not who.known:
        # where the evidence stopped is an account, not a person: never badge it as one
        person = PERSON_UNKNOWN + (f" · {account_said(tr)}" if who.account else "")
    elif who.login_time is None:
        person = f"no login: runs as {who.user}"
    elif _named_by_a_session_client(tr):
        # the person was attached to a shared session this login started: the badge sits over
        # the starter's login, so it must not read as that login's person or key
        person = f"person: {who.user}, a client of the shared session (this login started it)"
    else:
        person = f"person: {who.user}"
        if who.key_fp and who.user != who.account:
            person += f" (key {who.key_fp[:14]}…)"
    # recorded names drawn as they were recorded: an escape or a bidi override shown, not obeyed
    cands = [printable(candidate_short(c, on=when)) for c in who.candidates[:MAX_CANDIDATES]] if not who.known else []
    if not who.known and len(who.candidates) > MAX_CANDIDATES:
        cands.append(f"+{len(who.candidates) - MAX_CANDIDATES} more candidates (see the text or JSON answer)")
    return Layout(title=title, headline=headline, subtitle=" · ".join(sub), lanes=lanes, boxes=boxes,
                  links=links, person=printable(person), collapsed=collapsed, groups=groups, notes=notes,
                  confidence=level, confidence_label=f"confidence: {level}", candidates=cands,
                  sessions=_sessions(tr, {b.id: b.row for b in boxes}))


MAX_PEERS = 3                            # a connection match's other ends drawn; past this, 2 and "+N more"
CONNECT = "connect"                      # the link kind from a process to its connection's box


def _connection_boxes(tr: Trace, lanes: list[str], boxes: list[Box], links: list[Link], row: int,
                      width: int) -> int:
    """A connection match's other ends (tracer/trace.Connections), drawn as an ssh hop is drawn:
    a box per destination (address, port, name if known) in a lane of their own after the
    hosts', linked by an arrow from the process (to it: connect, listen; from it: accept).
    Returns the next free row."""
    c = tr.connections
    lanes.append({"connect": f"to {c.asked}", "accept": f"from {c.asked}", "listen": f"listening :{c.asked}"}[c.direction])
    lane = len(lanes) - 1
    peers = c.peers if len(c.peers) <= MAX_PEERS else c.peers[:MAX_PEERS - 1]
    poi = tr.chain[-1].node
    for i, p in enumerate(peers):
        end = endpoint(p.addr, p.port)
        title = _cut(f"{end} ({p.name})" if p.name else end, width)
        times = "once" if p.count == 1 else f"{p.count} times"
        meta = f"{times} · {clock(p.first)[11:19]}" + (f"–{clock(p.last)[11:19]}" if p.count > 1 else "")
        if c.direction == "accept":
            title = _cut(f"{p.addr} → port {p.port}", width)
        box = Box(id=f"conn:{i}", lane=lane, row=row, role="destination", title=printable(title), meta=meta,
                  command=printable(end + (f" ({p.name})" if p.name else "")))
        boxes.append(box)
        said = {"connect": f"connected {times}", "accept": f"came in {times}", "listen": "listened"}[c.direction]
        src, dst = (box.id, poi) if c.direction == "accept" else (poi, box.id)
        links.append(Link(src, dst, CONNECT, chain=False, label=said))
        row += 1
    if len(peers) < len(c.peers):
        rest = c.peers[len(peers):]
        boxes.append(Box(id="conn:more", lane=lane, row=row, role="destination",
                         title=f"+{len(rest)} more", meta=f"{sum(p.count for p in rest)} connections"))
        links.append(Link(poi, "conn:more", CONNECT, chain=False))
        row += 1
    return row


def _named_by_a_session_client(tr: Trace) -> bool:
    """Whether the answer names a person by a client of a shared session rather than by the
    login the chain starts at (a tmux server's starter)."""
    origin = tr.chain[0].login if tr.chain else None
    return bool(tr.shared) and origin is not None and tr.attributed.login_time is not None \
        and tr.attributed.login_time != origin.get("ts")


def _sessions(tr: Trace, row_of: dict[str, int]) -> list[SessionBox]:
    """Each shared session beside its chain step (or below the one before it, when that one's
    clients reach further down), its clients stacked under it: MAX_CLIENTS at most, else
    MAX_CLIENTS - 1 and one line saying how many more. Labels are cut to the side lane's width."""
    out: list[SessionBox] = []
    free = 0                                  # the first row of the side lane nobody uses
    for i, ss in enumerate(tr.shared):
        step = tr.chain[ss.step] if 0 <= ss.step < len(tr.chain) else tr.chain[-1]
        row = max(row_of.get(step.node, 0), free)
        sid = f"shared:{i}"
        where = f"on {ss.host}" + (f" · {ss.path}" if ss.path else "")
        # how sure the starter is, and the account when nobody is named, in the second line: the
        # first names the person (or "person unknown") and is never cut before it
        if not ss.starter.known and ss.starter.account:
            where = f"account {_cut(ss.starter.account, 12)} · {where}"
        elif ss.starter.confidence == INFERRED:
            where = f"inferred · {where}"
        if not ss.clients:
            where = f"no client {'attached' if ss.kind in ('tmux', 'screen') else 'asked'} · {where}"
        title = f"{shared.short_kind(ss)} (pid {ss.pid}) started by {person_of(ss.starter)}"
        if len(title) > SESSION_TITLE_W:          # the person before the pid: the pid goes below
            title = f"{shared.short_kind(ss)} started by {person_of(ss.starter)}"
            where = f"pid {ss.pid} · {where}"
        box = SessionBox(id=sid, kind=ss.kind, at=step.node, row=row, title=printable(_cut(title, SESSION_TITLE_W)),
                         meta=printable(_cut(where, SESSION_META_W)), known=ss.starter.known)
        shown = ss.clients if len(ss.clients) <= MAX_CLIENTS else ss.clients[:MAX_CLIENTS - 1]
        for j, c in enumerate(shown):
            # whose account it was, when the chain names no person: said as an account, never as the person
            account = f"account {_cut(c.who.account, 12)} · " if not c.who.known and c.who.account else ""
            tail = f" · pid {c.pid}" + (f" on {_cut(c.host, 14)}" if c.host != ss.host else "")
            meta = account + _cut(c.command, max(8, CLIENT_META_W - len(account) - len(tail))) + tail
            box.clients.append(ClientBox(id=f"{sid}:client:{j}", role=c.role, row=row + 1 + j,
                                         title=printable(_cut(shared.client_label(c), CLIENT_TITLE_W)),
                                         meta=printable(_cut(meta, CLIENT_META_W)), known=c.who.known,
                                         command=c.command))
        if len(shown) < len(ss.clients):
            more = len(ss.clients) - len(shown)
            box.clients.append(ClientBox(id=f"{sid}:more", role="more", row=row + 1 + len(shown),
                                         title=f"+{more} more client{'s' if more > 1 else ''}",
                                         meta="see the text or JSON answer"))
        out.append(box)
        free = 1 + max([row] + [c.row for c in box.clients])
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _chain_ancestor(g, node: str, chain_index: dict[str, int]) -> int:
    seen = set()
    while node not in chain_index:
        preds = [p for p in g.predecessors(node) if p not in seen]
        if not preds:
            return -1
        seen.add(node)
        node = preds[0]
    return chain_index[node]


def _collapse(g, nodes: list[str], lane_of, keep_head: int, keep_tail: int, run_max: int,
              expand: frozenset[str] = frozenset()) -> list:
    """Sort a slot by time; per lane, a run longer than run_max keeps its head and tail and
    folds the middle into one (lane, members) group - unless someone asked to expand it."""
    nodes = sorted(nodes, key=lambda n: (g.nodes[n]["step"].start, n))
    by_lane: dict[int, list[str]] = defaultdict(list)
    for n in nodes:
        by_lane[lane_of[g.nodes[n]["host"]]].append(n)
    out: list = []
    for lane in sorted(by_lane):
        run = by_lane[lane]
        members = run[keep_head:len(run) - keep_tail]
        if len(run) <= run_max or _expanded(members, expand):
            out.extend(run)
            continue
        tail = run[len(run) - keep_tail:] if keep_tail else []
        out.extend(run[:keep_head])
        out.append((lane, members))
        out.extend(tail)
    return out


def _expanded(members: list[str], expand: frozenset[str]) -> bool:
    """Was this would-be group expanded? Its id is `group:` + its first member, but the id the
    person saw may come from a gentler pass of the collapse loop, whose group starts later in
    the same run; expanding makes the picture taller, so the loop may now settle on a harder
    pass whose group starts earlier. Any member's id matches, since a node is in one run only."""
    return bool(expand) and any(f"group:{m}" in expand for m in members)


def _programs(g, members: list[str]) -> str:
    counts = Counter(os.path.basename(g.nodes[m]["step"].argv[0].lstrip("-")) if g.nodes[m]["step"].argv
                     else "?" for m in members)
    text = ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in counts.most_common(3))
    return text + (", …" if len(counts) > 3 else "")


def _links(tr: Trace, visible: dict[str, str]) -> list[Link]:
    gap_at = {gp["before"]: gp for gp in tr.gaps}
    chain_pos = {s.node: i for i, s in enumerate(tr.chain)}
    links: dict[tuple[str, str], Link] = {}
    for a, b, d in tr.graph.edges(data=True):
        src, dst = visible.get(a), visible.get(b)
        if src is None or dst is None or src == dst:
            continue
        kind = d["kind"]
        step = tr.graph.nodes[b]["step"]
        label = None
        if kind == "ssh":
            label = f"ssh as {step.login['user'] if step.login else step.user} to {step.host}"
        elif kind in PRIVILEGE:
            label = d["note"]
        gap = None
        if d["chain"] and chain_pos.get(b) in gap_at:
            gap = f"{format_duration(gap_at[chain_pos[b]]['seconds'])} later"
        if d["inferred"] and label:
            label += " (inferred)"
        links.setdefault((src, dst), Link(src, dst, kind, d["chain"], d["inferred"], label, gap))
    return list(links.values())


def _titles(tr: Trace, width: int) -> tuple[str, str]:
    poi = tr.poi
    if tr.change:
        what = f"{tr.change['op']} {tr.change.get('path2') or tr.change['path']}"
    else:
        what = short_command(poi.argv, poi.command, width)
    title = f"{what} on {poi.host}"
    via = []
    for s in tr.chain:
        if s.edge in ("login", "ssh") and s.host != poi.host and s.host not in via:
            via.append(s.host)
    parts = [person_of(tr.attributed)]
    if via:
        parts.append("via " + ", ".join(via))
    parts += privilege(tr.chain)
    return title, ", ".join(parts)
