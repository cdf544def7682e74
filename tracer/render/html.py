"""A trace as one self-contained, interactive HTML page: the PNG's picture as inline SVG, the
facts of every process a click away, why each link exists on hover, pan and zoom.

The geometry, colours and drawing rules are image.py's (1 inch of the PNG = 96 SVG units),
so the page and the picture read the same. Everything is inline - style, script, data - so
the file works opened from disk, mailed, or served by `whodid serve` under a strict
Content-Security-Policy: no inline event handlers, no style attributes (SVG presentation
attributes and classes instead), and a nonce on the <style> and <script> elements.

The facts come from the store (`gather_details`), the page from the trace alone
(`render_html`): same inputs, same page.
"""

from __future__ import annotations

import json
import math
import shlex
from html import escape as _html_escape
from typing import Any

from ..events import AUID_UNSET
from ..stitch import Step
from ..trace import Trace, image_node
from ..when import clock, iso
from .image import BLACK, BUS_X, CHAIN_X, EDGE, FILL, GREY, HEADER, LABEL_H, LANE_W, LIGHT, LINK_COLOUR, MARGIN
from .image import CONFIDENCE_COLOUR, CONFIDENCE_FILL, MATCH, PERSON, PRIV, SSH, _geometry, _row_tops, confidence_of
from .image import HOPS, SHARED, SHARED_FILL, SIDE_LANE, session_geometry, session_paths
from . import shared
from .confidence import candidate_head, reason
from .layout import PRIVILEGE, Box, ClientBox, Layout, Link, SessionBox, layout
from .text import printable

S = 96.0                      # SVG units per inch of the PNG's geometry
PT = S / 72                   # matplotlib sizes are in points
DOTTED = "2.5 4"              # inferred links, as the PNG's ":" style
HIT_W = 14                    # the invisible, wide stroke that makes thin links easy to hover



def escape(text: str) -> str:
    """Recorded data as HTML. HTML escaping stops markup, not a right-to-left override (which
    makes a browser show `\u202etxt.exe` as `exe.txt`) nor a control character: those become
    visible escapes first (printable), as in the terminal and in Slack."""
    return _html_escape(printable(text))


def _printable_data(obj):
    """The page's script data with every string made printable (the script shows them as text)."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_data(k): _printable_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_printable_data(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# Facts for the details panel


def gather_details(store, tr: Trace) -> dict[str, dict]:
    """node id -> facts about that process for the details panel, read from the store:
    host, pid, full argv (list), command, cwd, exe, user (effective, name), uid, euid (numbers
    when known), login user (auid name) and auid, audit session (ses), tty, container, start
    time (ISO, UTC), exit time and exit code (when it exited), and for login steps the login
    (user, method, from addr:port, key fingerprint). Only keys with values."""
    steps = {n: d["step"] for n, d in tr.graph.nodes(data=True)}
    procs = store.procs({s.proc for s in steps.values()})
    offsets = store.clock_offsets()
    images: dict[int, list] = {}

    def images_of(proc_id: int) -> list:
        if proc_id not in images:
            images[proc_id] = store.images(proc_id)
        return images[proc_id]

    out = {}
    for node, step in steps.items():
        proc = procs.get(step.proc)
        own = images_of(step.proc)
        image = next((im for im in own if image_node(step.proc, im.ts) == node), None)
        if image is None and proc is not None and proc.parent is not None:
            image = _inherited(images_of(proc.parent), proc)
        last = image is None or not own or own[-1] is image      # exits end the last image only
        login = step.login or (store.login_of(step.proc) if own and own[0] is image else None)
        out[node] = _facts(step, proc, image, last, login, offsets.get(step.host, 0.0))
    return out


def _inherited(parent_images: list, proc):
    """The parent's image a process that never exec'd was running (trace.py's rule)."""
    at = proc.fork_ts if proc.fork_ts is not None else float("inf")
    before = [im for im in parent_images if im.ts <= at]
    return before[-1] if before else (parent_images[0] if parent_images else None)


def _facts(step: Step, proc, image, last: bool, login: dict | None, offset: float) -> dict[str, Any]:
    facts: dict[str, Any] = _step_facts(step)
    if image is not None:
        facts.update(uid=image.uid, euid=image.euid, auid=image.auid, ses=image.ses)
    if login:
        facts["user"] = login["user"]
        # the sshd image runs as root; the numbers that matter are the account's
        facts.update(uid=login.get("uid"), euid=None)
        facts["login"] = {k: v for k, v in (
            ("user", login["user"]), ("method", login.get("method")),
            ("from", f"{login['raddr']}:{login['rport']}"),
            ("to", f"{login['laddr']}:{login['lport']}" if login.get("laddr") else None),
            ("key", login.get("key_fp"))) if v is not None}
    if proc is not None and last and proc.exit_ts is not None:
        facts["exit"] = iso(proc.exit_ts + offset)
        facts["exit_code"] = proc.exit_code
    return {k: v for k, v in facts.items() if v not in (None, "", [], AUID_UNSET)}


def _step_facts(step: Step) -> dict[str, Any]:
    """What the trace itself knows about a step: enough for a page made without the store."""
    return {"host": step.host, "pid": step.pid, "command": step.command, "argv": list(step.argv),
            "cwd": step.cwd, "exe": step.exe, "user": step.user, "login_user": step.login_user,
            "tty": step.tty, "container": step.container,
            "start": iso(step.start) if step.start else None}


# ---------------------------------------------------------------------------------------
# Why a link exists


def edge_why(tr: Trace, src: str, dst: str) -> str:
    """Why an edge between two graph nodes exists, in a sentence for people: for ssh hops
    whether the client's connection was matched to the login by its exact 4-tuple (observed)
    or inferred by time (and the note), for sudo/su/setuid the privilege change note, for
    fork/exec that it was observed (or inferred). Uses tr.graph.edges[src, dst] data:
    kind, inferred, note, chain; and the steps' login dicts (raddr, rport, laddr, lport)."""
    why = _why(tr, src, dst)
    return "The" + why[3:] if why.startswith("the ") else why


def _why(tr: Trace, src: str, dst: str) -> str:
    d = tr.graph.edges[src, dst]
    a, b = tr.graph.nodes[src]["step"], tr.graph.nodes[dst]["step"]
    kind, inferred, note = d["kind"], d.get("inferred", False), d.get("note")
    if kind == "ssh":
        return _ssh_why(a, b, inferred, note)
    if inferred:
        return f"{_started(a, b, kind)} - inferred, not observed: {_unprefixed(note) or 'no direct record'}."
    if kind in PRIVILEGE:
        change = note or f"{a.user} -> {b.user} via {kind}"
        return f"Change of user: {change}. Observed on {b.host}: {_started(a, b, kind)}, which runs as {b.user}."
    return f"{_started(a, b, kind)}: observed on {b.host}."


def _started(a: Step, b: Step, kind: str) -> str:
    if kind == "exec" or a.proc == b.proc:
        return f"pid {b.pid} replaced {a.program or a.command} with {b.program or b.command} (exec)"
    return f"{_name(a)} started {_name(b)}"


def _name(s: Step) -> str:
    if s.login:
        return f"the ssh login of {s.login['user']} (sshd, pid {s.pid})"
    return f"{s.program or s.command} (pid {s.pid})"


def _ssh_why(a: Step, b: Step, inferred: bool, note: str | None) -> str:
    hop = f"An ssh hop from {a.host} to {b.host}"
    lg = b.login
    if inferred:
        return f"{hop}, inferred by time, not observed: {_unprefixed(note) or 'no connection recorded'}."
    if not lg:
        return f"{hop}: {_name(a)} on {a.host} led to {_name(b)} on {b.host}."
    client = f"{lg['raddr']}:{lg['rport']}"
    if not lg.get("laddr"):
        return (f"{hop}: {_name(a)} connected from {client}, and {b.host} recorded the login "
                f"of {lg['user']} from {client} - matched by the client's address and port (the server's "
                "end was not recorded), observed on both hosts.")
    server = f"{lg['laddr']}:{lg['lport']}"
    return (f"{hop}: {_name(a)} on {a.host} connected {client} -> {server}, and {b.host} "
            f"recorded the login of {lg['user']} on {server} from {client} - matched by the exact 4-tuple, "
            "observed on both hosts.")


def _unprefixed(note: str | None) -> str | None:
    return note[len("inferred: "):] if note and note.startswith("inferred: ") else note


def _link_whys(tr: Trace, lay: Layout) -> dict[tuple[str, str], str]:
    """(src box, dst box) -> why, from the first graph edge each link stands for (as layout's
    _links keeps the first); links into or out of a collapsed group say so."""
    visible = {b.id: b.id for b in lay.boxes if b.role != "collapsed"}
    count = {}
    for b in lay.boxes:
        if b.role == "collapsed":
            count[b.id] = b.count
            visible.update((m, b.id) for m in b.members)
    whys: dict[tuple[str, str], str] = {}
    for a, b in tr.graph.edges():
        key = (visible.get(a), visible.get(b))
        if None in key or key[0] == key[1] or key in whys:
            continue
        why = edge_why(tr, a, b)
        groups = [count[k] for k in key if k in count]
        if groups:
            why += f" (shown as one link for a group of {groups[0]} collapsed commands)"
        whys[key] = why
    c = tr.connections
    for link in lay.links:
        if link.kind == "connect" and c is not None:
            box = link.dst if link.src == tr.chain[-1].node else link.src
            p = c.peers[int(box.split(":")[1])] if box != "conn:more" else None
            end = f"{p.addr}:{p.port}" if p else "other ends"
            whys[(link.src, link.dst)] = {
                "connect": f"pid {tr.poi.pid} on {tr.poi.host} connected to {end}",
                "accept": f"a connection from {end} was accepted on {tr.poi.host}",
                "listen": f"pid {tr.poi.pid} on {tr.poi.host} listened on {end}"}[c.direction] + (
                f" ({p.count} times, recorded by its agent)." if p else ".")
    return whys


# ---------------------------------------------------------------------------------------
# The page


def render_html(tr: Trace, now: float, details: dict[str, dict] | None = None, *,
                expand: frozenset[str] = frozenset(), actions: dict[str, str] | None = None,
                nonce: str | None = None) -> str:
    """The page. `actions` is None for a static export (whodid trace --html FILE: no server
    buttons), or, when served, {"widen": URL or absent, "expand": URL template containing the
    literal text {groups} to be replaced by a comma-separated list of group ids}. `nonce`: when
    given, put nonce="..." on the <style> and <script> elements (the server sends a
    Content-Security-Policy with that nonce; so NO inline event handler attributes like
    onclick=, and NO style="" attributes anywhere - use SVG presentation attributes such as
    fill/stroke and CSS classes)."""
    lay = layout(tr, now, expand=expand)
    whys = _link_whys(tr, lay)
    actions = actions or {}
    n = f' nonce="{escape(nonce)}"' if nonce else ""
    main_attrs = f' data-expanded="{escape(",".join(sorted(expand)))}"'
    if actions.get("expand"):
        main_attrs += f' data-expand-url="{escape(actions["expand"])}"'
    widen = f'<a id="widen" href="{escape(actions["widen"])}">Widen scope</a>' if actions.get("widen") else ""
    data = _page_data(tr, lay, details or {}, whys)
    level = confidence_of(lay)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>whodid: {escape(lay.title)}</title>
<style{n}>{CSS}</style>
</head>
<body>
<main{main_attrs}>
<header>
<h1 id="title">{escape(lay.title)}</h1>
<p id="headline" class="{level}">{escape(lay.headline)}</p>
<p id="subtitle">{escape(lay.subtitle)}</p>
<p id="person" class="{level}">{escape(lay.person)}</p>
{_confidence(tr, level)}
</header>
{_candidates(tr)}
{_shared_sessions(tr)}
<div class="content">
<section class="picture">
<div class="toolbar">
<button type="button" id="zoom-in" aria-label="Zoom in">+</button>
<button type="button" id="zoom-out" aria-label="Zoom out">&#8722;</button>
<button type="button" id="zoom-fit">Fit</button>
{widen}
</div>
{_svg(lay, whys, tr)}
{_legend(bool(lay.sessions))}
{_list("picture-notes", lay.notes)}
{_list("notes", tr.notes)}
</section>
<aside id="details" aria-live="polite">
<h2>Details</h2>
<p class="hint">Click or tap a box for its process: command line, user, times, exit code.
Hover or tap a link to see why it is there. Drag to pan, wheel or pinch to zoom.</p>
</aside>
</div>
<script type="application/json" id="trace-data"{n}>{_script_json(data)}</script>
</main>
<div id="tooltip" role="tooltip" hidden></div>
<script{n}>{JS}</script>
</body>
</html>
"""


def _confidence(tr: Trace, level: str) -> str:
    # how the answer was reached (the text's "Who:" line, Slack's context): why root or a shared
    # account names no one, which key named jim - the page is where people go to check it
    return (f'<p id="confidence" class="confidence {level}"><strong>Confidence: {level}</strong> - '
            f"{escape(reason(tr))}</p>\n"
            f'<p id="how"><strong>How:</strong> {escape(tr.attributed.how)} ({escape(tr.summary)})</p>')


def _candidates(tr: Trace) -> str:
    """The candidates of an unknown answer, each with its evidence (the text answer's block)."""
    who = tr.attributed
    if who.known or not who.candidates:
        return ""
    items = []
    for c in who.candidates:
        evidence = "".join(f"<li>{escape(e)}</li>" for e in c.evidence)
        items.append(f'<li class="candidate"><span class="who">{escape(candidate_head(c))}</span>'
                     + (f'<ul class="evidence">{evidence}</ul>' if evidence else "") + "</li>")
    return ('<section id="candidates" aria-label="Candidates"><h2>Candidates</h2>'
            "<p class=\"hint\">The person is unknown. These logins are what this process's own evidence "
            "points at; none is an answer.</p>"
            f'<ol>{"".join(items)}</ol></section>')


MAX_COMMAND = 300            # a client's command in the table; its box's details have it whole


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _shared_sessions(tr: Trace) -> str:
    """Each shared session on the chain: who started it, and a table of its clients with their
    own chains (summary) and the evidence for who they are (how, notes)."""
    if not tr.shared:
        return ""
    out = ['<section id="shared-sessions" aria-label="Shared sessions"><h2>Shared sessions</h2>']
    for i, ss in enumerate(tr.shared):
        rows = []
        for c in ss.clients:
            evidence = "".join(f"<li>{escape(e)}</li>" for e in [c.who.how, *c.who.notes] if e)
            cls = "client" + ("" if c.who.known else " unknown")
            rows.append(f'<tr class="{cls}"><td>{escape(shared.ROLE_SHORT.get(c.role, c.role))}</td>'
                        f"<td>{escape(shared.who_said(c.who))}</td><td>{escape(shared.when_said(c))}</td>"
                        f'<td class="cmd">{escape(_cut(c.command, MAX_COMMAND))}</td><td>{escape(c.host)}</td><td>{c.pid}</td>'
                        f'<td>{escape(c.summary)}<ul class="evidence">{evidence}</ul></td></tr>')
        table = ("<table><thead><tr><th>did</th><th>person</th><th>when</th><th>command</th><th>host</th>"
                 f"<th>pid</th><th>its chain, and why</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
                 if rows else '<p class="hint">No client used it when the command ran.</p>')
        socket = (f'<p class="socket">{escape(shared.path_said(ss))} <code>{escape(_cut(ss.path, MAX_COMMAND))}</code></p>'
                  if ss.path else "")
        out.append(f'<div class="shared {escape(ss.kind)}" id="shared-{i}">'
                   f"<h3>{escape(shared.title(ss))}, {escape(shared.started_said(ss))}</h3>"
                   + socket
                   + (f'<p class="note">{escape(ss.note)}</p>' if ss.note else "")
                   + table + "</div>")
    out.append("</section>")
    return "".join(out)


def _list(id_: str, items: list[str]) -> str:
    if not items:
        return ""
    return f'<ul id="{id_}" class="notes">' + "".join(f"<li>{escape(t)}</li>" for t in items) + "</ul>"


def _script_json(obj) -> str:
    """JSON that cannot end its <script> element early: no <, > or & survive as themselves."""
    text = json.dumps(_printable_data(obj), ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _page_data(tr: Trace, lay: Layout, details: dict[str, dict], whys: dict) -> dict:
    """What the script shows when a box is chosen: per box a title, display-ready rows, and
    the facts they were made from (for a collapsed group, its members' command lines)."""
    g = tr.graph
    reached: dict[str, list[str]] = {}
    for (src, dst), why in whys.items():
        reached.setdefault(dst, []).append(why)
    nodes: dict[str, dict] = {}
    for b in lay.boxes:
        if b.role == "collapsed":
            steps = [g.nodes[m]["step"] for m in b.members]
            rows = [["commands", str(b.count)], ["programs", b.meta], ["host", lay.lanes[b.lane]]]
            if steps:
                rows += [["first", iso(steps[0].start)], ["last", iso(steps[-1].start)]]
            members = [f"{clock(s.start)[11:19]}  {s.user}  {s.command}" for s in steps]
            nodes[b.id] = {"title": b.title, "rows": rows, "members": members}
            continue
        if b.role == "destination":
            nodes[b.id] = {"title": b.command or b.title, "rows": _peer_rows(tr, b.id)}
            continue
        step = g.nodes[b.id]["step"]
        facts = {**_step_facts(step), **details.get(b.id, {})}
        rows = _rows(facts) + [["reached by", why] for why in reached.get(b.id, [])]
        nodes[b.id] = {"title": b.command or b.title, "rows": rows, "facts": facts}
    for box, ss in zip(lay.sessions, tr.shared):
        nodes[box.id] = {"title": shared.title(ss), "rows": [
            ["kind", shared.kind_name(ss)], ["host", ss.host], ["pid", str(ss.pid)], [shared.path_said(ss), ss.path or "?"],
            ["started by", shared.who_said(ss.starter)], ["starter's chain", ss.starter.how], ["note", ss.note]]}
        for cb, c in zip(box.clients, ss.clients):
            if cb.role == "more":
                continue
            nodes[cb.id] = {"title": c.command, "rows": [
                ["did", shared.ROLE_SHORT.get(c.role, c.role)], ["person", shared.who_said(c.who)],
                ["account", c.who.account or "?"], ["when", shared.when_said(c)], ["host", c.host],
                ["pid", str(c.pid)], ["command", c.command], ["its chain", c.summary], ["how", c.who.how]]}
    return {"nodes": nodes}


def _peer_rows(tr: Trace, box_id: str) -> list[list[str]]:
    """What the page shows for a connection's box (layout's conn:<i>): the end, how often, when."""
    c = tr.connections
    if c is None:
        return []
    if box_id == "conn:more":
        return [["connections", str(c.count)], ["asked", c.asked]]
    p = c.peers[int(box_id.split(":")[1])]
    rows = [["address", p.addr], ["port", str(p.port)], ["name", p.name or "not recorded"],
            ["connections", str(p.count)], ["first", iso(p.first)], ["last", iso(p.last)], ["asked", c.asked]]
    if c.login:
        rows.append(["carried the login of", f"{c.login['user']} at {iso(c.login['ts'])}"])
    rows += [["name's addresses", h] for h in c.how]
    return rows


LABELS = {"host": "host", "pid": "pid", "command": "command", "argv": "argv", "cwd": "working dir",
          "exe": "executable", "user": "user", "uid": "uid", "euid": "euid", "login_user": "login user",
          "auid": "auid", "ses": "audit session", "tty": "tty", "container": "container", "start": "started",
          "exit": "exited", "exit_code": "exit code"}
LOGIN_LABELS = {"user": "ssh login as", "method": "login method", "from": "login from", "to": "login to",
                "key": "login key"}


def _rows(facts: dict[str, Any]) -> list[list[str]]:
    rows = []
    order = [*LABELS, "login"]
    for key in sorted(facts, key=lambda k: order.index(k) if k in order else len(order)):
        value = facts[key]
        if value in (None, "", []):
            continue
        if key == "login" and isinstance(value, dict):
            rows += [[LOGIN_LABELS.get(k, k), str(v)] for k, v in value.items()]
        elif key == "argv":
            text = shlex.join(value)
            if text != facts.get("command"):         # only when it says more than the command line
                rows.append(["argv", text])
        else:
            rows.append([LABELS.get(key, key.replace("_", " ")), str(value)])
    return rows


# ---------------------------------------------------------------------------------------
# The picture: image.py's drawing, as SVG


def _u(inches: float) -> str:
    return f"{inches * S:.1f}"


def _v(inches: float) -> str:
    """A y coordinate: the SVG starts where the PNG's body does (the header is HTML)."""
    return f"{(inches - HEADER) * S:.1f}"


def _text(x: float, y: float, text: str, size: float, fill: str, cls: str = "sans", *, anchor: str = "start",
          baseline: str = "central", bold: bool = False, italic: bool = False, halo: bool = False) -> str:
    attrs = f'x="{_u(x)}" y="{_v(y)}" font-size="{size * PT:.1f}" fill="{fill}" class="{cls}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if baseline:
        attrs += f' dominant-baseline="{baseline}"'
    if bold:
        attrs += ' font-weight="bold"'
    if italic:
        attrs += ' font-style="italic"'
    if halo:        # the PNG's white label box: a white outline painted under the letters
        attrs += ' stroke="white" stroke-width="4" stroke-linejoin="round" paint-order="stroke"'
    return f"<text {attrs}>{escape(text)}</text>"


def _svg(lay: Layout, whys: dict, tr: Trace | None = None) -> str:
    tops = _row_tops(lay)
    width = 2 * MARGIN + LANE_W * lay.columns
    height = tops[-1] - HEADER + 0.05
    geo = {b.id: _geometry(b, tops) for b in lay.boxes}
    by_id = {b.id: b for b in lay.boxes}
    parts = [(f'<svg id="trace" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_u(width)} {_u(height)}" '
              f'aria-label="{escape(lay.title)}">')]
    for i, host in enumerate(lay.lanes):
        x0 = MARGIN + i * LANE_W
        parts.append(f'<g class="lane" data-host="{escape(host)}"><rect x="{_u(x0)}" y="0" width="{_u(LANE_W)}" '
                     f'height="{_u(tops[-1] - HEADER)}" fill="{"#f7f7f7" if i % 2 == 0 else "white"}" '
                     f'stroke="#dddddd" stroke-width="1"/>'
                     + _text(x0 + LANE_W / 2, HEADER + 0.2, host, 11.5, BLACK, anchor="middle", bold=True)
                     + "</g>")
    if lay.sessions:
        x0 = MARGIN + lay.side * LANE_W
        parts.append(f'<g class="lane side"><rect x="{_u(x0)}" y="0" width="{_u(LANE_W)}" '
                     f'height="{_u(tops[-1] - HEADER)}" fill="white" stroke="#dddddd" stroke-width="1"/>'
                     + _text(x0 + LANE_W / 2, HEADER + 0.2, SIDE_LANE, 11.5, SHARED, anchor="middle", bold=True,
                             italic=True) + "</g>")
    for link in lay.links:
        why = whys.get((link.src, link.dst), "")
        parts.append(_edge(link, by_id, geo, why))
    parts += _session_parts(lay, geo, tops, tr.shared if tr is not None else [])
    level = confidence_of(lay)
    for b in lay.boxes:
        parts.append(_node(b, geo[b.id], level))
        if b.role == "origin":
            x, y, _, _ = geo[b.id]
            parts.append(_text(x, y - 0.06, lay.person, 10.5, CONFIDENCE_COLOUR[level], baseline="", bold=True)
                         .replace("<text ", f'<text id="person-badge" data-confidence="{level}" ', 1))
    parts.append("</svg>")
    return "\n".join(parts)


def _session_parts(lay: Layout, geo: dict, tops: list[float], sessions: list) -> list[str]:
    """The shared sessions (image.py's drawing): their links, then their boxes and clients'."""
    geo = {**geo, **session_geometry(lay, tops)}
    whys: dict[tuple[str, str], str] = {}
    role_of: dict[str, str] = {}
    for box, ss in zip(lay.sessions, sessions):
        whys[(box.at, box.id)] = shared.session_why(ss)
        for cb, c in zip(box.clients, ss.clients):
            whys[(cb.id, box.id)] = shared.client_why(ss, c)
            role_of[cb.id] = cb.role
    parts = []
    for src, dst, pts in session_paths(lay, geo, tops):
        d = "M" + "L".join(f"{_u(x)} {_v(y)}" for x, y in pts)
        role = role_of.get(src)
        dash = ' stroke-dasharray="6 4"' if role in (None, "injected") else ""
        tip = pts[-1]
        head = ([(tip[0] - 0.045, tip[1] + 0.09), (tip[0] + 0.045, tip[1] + 0.09), tip] if role else
                [(tip[0] - 0.09, tip[1] - 0.045), (tip[0] - 0.09, tip[1] + 0.045), tip])
        why = whys.get((src, dst), "")
        kind = f"client {role}" if role else "joins"
        parts.append(f'<g class="edge shared {kind}" data-src="{escape(src)}" data-dst="{escape(dst)}" '
                     f'data-kind="shared" data-why="{escape(why)}"><title>{escape(why)}</title>'
                     f'<path class="hit" d="{d}" fill="none" stroke="#000" stroke-opacity="0" stroke-width="{HIT_W}"/>'
                     f'{_path(d, SHARED, 1.6, dash)}{_polygon(head, SHARED)}</g>')
    for box in lay.sessions:
        parts.append(_session_node(box, geo[box.id]))
        for cb in box.clients:
            parts.append(_client_node(cb, geo[cb.id]))
    return parts


def _session_node(b: SessionBox, geo: tuple[float, float, float, float]) -> str:
    x, y, w, h = geo
    return (f'<g class="node session {escape(b.kind)}" data-id="{escape(b.id)}" tabindex="0" role="button" '
            f'aria-label="{escape(b.title)}, {escape(b.meta)}"><title>{escape(b.title)}</title>'
            f'<rect x="{_u(x)}" y="{_v(y)}" width="{_u(w)}" height="{_u(h)}" rx="{_u(0.06)}" fill="{SHARED_FILL}" '
            f'stroke="{SHARED}" stroke-width="{1.8 * PT:.1f}" stroke-dasharray="6 4"/>'
            + _text(x + 0.09, y + 0.16, b.title, 9.5, SHARED if b.known else GREY, bold=True)
            + _text(x + 0.09, y + 0.35, b.meta, 8.5, GREY) + "</g>")


def _client_node(b: ClientBox, geo: tuple[float, float, float, float]) -> str:
    x, y, w, h = geo
    if b.role == "more":
        return ('<g class="more-clients">' + _text(x + 0.09, y + 0.16, b.title, 9.5, GREY, italic=True)
                + _text(x + 0.09, y + 0.35, b.meta, 8.5, GREY, italic=True) + "</g>")
    dash = ' stroke-dasharray="6 4"' if b.role == "injected" else ""
    cls = f"node client {escape(b.role)}" + ("" if b.known else " unknown")
    return (f'<g class="{cls}" data-id="{escape(b.id)}" tabindex="0" role="button" '
            f'aria-label="{escape(b.title)}, {escape(b.meta)}"><title>{escape(_cut(b.command or b.title, MAX_COMMAND))}</title>'
            f'<rect x="{_u(x)}" y="{_v(y)}" width="{_u(w)}" height="{_u(h)}" rx="{_u(0.06)}" fill="white" '
            f'stroke="{SHARED}" stroke-width="{1.1 * PT:.1f}"{dash}/>'
            + _text(x + 0.09, y + 0.16, b.title, 9.5, BLACK if b.known else GREY, bold=b.known, italic=not b.known)
            + _text(x + 0.09, y + 0.35, b.meta, 8.5, GREY) + "</g>")


def _edge(link: Link, by_id: dict[str, Box], geo: dict, why: str) -> str:
    sx, sy, sw, sh = geo[link.src]
    dx, dy, dw, dh = geo[link.dst]
    src, dst = by_id[link.src], by_id[link.dst]
    colour = PRIV if link.kind in PRIVILEGE else LINK_COLOUR.get(link.kind, "#555555")
    dash = f' stroke-dasharray="{DOTTED}"' if link.inferred else ""
    extra: list[str] = []
    if link.kind in HOPS and src.lane != dst.lane:
        right = dst.lane > src.lane
        start = (sx + sw if right else sx, sy + sh / 2)
        end = (dx if right else dx + dw, dy + dh / 2)
        base, head = _arrow_head(start, end, 0.14, 0.06)
        d = f"M{_u(start[0])} {_v(start[1])}L{_u(base[0])} {_v(base[1])}"
        line = _path(d, SSH, 2.4, dash)
        extra.append(_polygon(head, SSH))
        if link.label:
            extra.append(_text((start[0] + end[0]) / 2, dy - LABEL_H / 2 - 0.02, link.label, 9, SSH,
                               anchor="middle", bold=True, halo=True))
        if link.gap:
            extra.append(_text(start[0] + (0.1 if right else -0.1), sy + sh + 0.02, link.gap, 9.5, BLACK,
                               anchor="start" if right else "end", baseline="hanging", italic=True))
    elif link.chain:
        x = MARGIN + dst.lane * LANE_W + CHAIN_X
        d = f"M{_u(x)} {_v(sy + sh)}L{_u(x)} {_v(dy - 0.08)}"
        line = _path(d, colour, 2.4 if link.kind in PRIVILEGE else 1.6, dash)
        extra.append(_polygon([(x - 0.045, dy - 0.09), (x + 0.045, dy - 0.09), (x, dy)], colour))
        texts = [t for t in (link.label, link.gap) if t]
        if texts:
            extra.append(_text(x + 0.12, dy - LABEL_H / 2 - 0.04, "  ·  ".join(texts), 9.5,
                               colour if link.label else BLACK, bold=bool(link.label), italic=not link.label))
    else:
        bus = MARGIN + dst.lane * LANE_W + BUS_X
        d = f"M{_u(bus)} {_v(sy + sh)}L{_u(bus)} {_v(dy + dh / 2)}L{_u(dx)} {_v(dy + dh / 2)}"
        line = _path(d, "#a0a0a0", 1.0, dash)
    classes = " ".join(["edge", link.kind] + (["on-chain"] if link.chain else []) +
                       (["inferred"] if link.inferred else []))
    return (f'<g class="{classes}" data-src="{escape(link.src)}" data-dst="{escape(link.dst)}" '
            f'data-kind="{escape(link.kind)}" data-why="{escape(why)}"><title>{escape(why)}</title>'
            f'<path class="hit" d="{d}" fill="none" stroke="#000" stroke-opacity="0" stroke-width="{HIT_W}"/>'
            f'{line}{"".join(extra)}</g>')


def _path(d: str, colour: str, width_pt: float, dash: str) -> str:
    return (f'<path class="line" d="{d}" fill="none" stroke="{colour}" stroke-width="{width_pt * PT:.1f}"'
            f'{dash}/>')


def _polygon(points: list[tuple[float, float]], colour: str) -> str:
    pts = " ".join(f"{_u(x)},{_v(y)}" for x, y in points)
    return f'<polygon class="head" points="{pts}" fill="{colour}"/>'


def _arrow_head(start, end, length: float, half: float):
    """Where the shaft stops, and the triangle whose tip touches `end`."""
    (x0, y0), (x1, y1) = start, end
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / norm, (y1 - y0) / norm
    bx, by = x1 - ux * length, y1 - uy * length
    return (bx, by), [(x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)]


def _node(b: Box, geo: tuple[float, float, float, float], level: str = "observed") -> str:
    x, y, w, h = geo
    faded = b.role in ("context", "collapsed")
    attrs = f'class="node {b.role}" data-id="{escape(b.id)}" tabindex="0" role="button"'
    if b.role == "collapsed":
        attrs += f' data-group="{escape(b.id)}" data-count="{b.count}"'
    attrs += f' aria-label="{escape(b.title)}, {escape(b.meta)}"'
    stroke_w = {"poi": 2.8, "origin": 2.2}.get(b.role, 1.1)
    dash = ' stroke-dasharray="6 4"' if b.role == "collapsed" else ""
    fill, stroke = FILL[b.role], EDGE[b.role]
    if b.role == "origin":       # drawn as sure as the person is (image.py's CONFIDENCE_*)
        fill, stroke = CONFIDENCE_FILL[level], CONFIDENCE_COLOUR[level]
        dash = {"inferred": ' stroke-dasharray="6 4"', "unknown": f' stroke-dasharray="{DOTTED}"'}.get(level, "")
    parts = [f"<g {attrs}><title>{escape(b.command or b.title)}</title>",
             (f'<rect x="{_u(x)}" y="{_v(y)}" width="{_u(w)}" height="{_u(h)}" rx="{_u(0.06)}" '
              f'fill="{fill}" stroke="{stroke}" stroke-width="{stroke_w * PT:.1f}"{dash}/>'),
             _text(x + 0.09, y + 0.16, b.title, 9.5 if faded else 10.5, GREY if faded else BLACK, "mono",
                   bold=b.role == "poi", italic=b.role == "collapsed"),
             _text(x + 0.09, y + 0.35, b.meta, 8.5, GREY)]
    if b.role == "poi":
        parts.append(_text(x + w - 0.08, y + 0.35, "MATCHED", 8.5, MATCH, anchor="end", bold=True))
    parts.append("</g>")
    return "".join(parts)


LEGEND = [("line", "#555555", 1.6, False, "started (fork/exec)"),
          ("line", SSH, 2.4, False, "ssh hop to another host"),
          ("line", PRIV, 2.4, False, "change of user (sudo/su/setuid)"),
          ("line", BLACK, 1.6, True, "inferred, not observed"),
          ("box", FILL["origin"], PERSON, "where the chain starts (a login, a service)"),
          ("box", FILL["poi"], MATCH, "matched command"),
          ("box", LIGHT, "#a0a0a0", "context (wider scope)")]


SHARED_LEGEND = ("box", SHARED_FILL, SHARED, "shared session (tmux, screen, ssh master) and its clients")


def _legend(sessions: bool = False) -> str:
    items = []
    for kind, a, b, *rest in LEGEND + ([SHARED_LEGEND] if sessions else []):
        if kind == "line":
            dotted, label = rest
            dash = f' stroke-dasharray="{DOTTED}"' if dotted else ""
            mark = f'<line x1="2" y1="8" x2="28" y2="8" stroke="{a}" stroke-width="{b * PT:.1f}"{dash}/>'
        else:
            (label,) = rest
            mark = f'<rect x="4" y="2" width="22" height="12" rx="3" fill="{a}" stroke="{b}" stroke-width="2"/>'
        items.append(f'<li><svg width="30" height="16" viewBox="0 0 30 16" aria-hidden="true">{mark}</svg>'
                     f"{escape(label)}</li>")
    return '<ul id="legend" class="legend">' + "".join(items) + "</ul>"


# ---------------------------------------------------------------------------------------
# Style and behaviour: written here, inline, no third-party code

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;
  background:#fff;overflow-x:hidden}
main{display:flex;flex-direction:column;gap:10px;padding:12px 16px;max-width:1600px;margin:0 auto}
header h1{font-size:1.35rem;margin:0 0 4px;overflow-wrap:anywhere}
header p{margin:0 0 2px;overflow-wrap:anywhere}
#headline{color:#009E73;font-weight:bold;font-size:1.15rem}
#subtitle{color:#6b6b6b;font-size:.9rem}
#person{display:inline-block;margin-top:6px;padding:1px 10px;border:1px solid #009E73;border-radius:999px;
  background:#d9f0e8;color:#00684d;font-weight:bold}
#headline.inferred{color:#7a5000}
#headline.unknown{color:#444}
#person.inferred{border:1px dashed #A86F00;background:#fcefd2;color:#7a5000}
#person.unknown{border:1px dotted #555;background:#ececec;color:#1a1a1a}
#confidence{font-size:.95rem}
#how{font-size:.9rem;color:#444;margin:2px 0;overflow-wrap:anywhere}
#confidence.observed strong{color:#00684d}
#confidence.inferred strong{color:#7a5000}
#confidence.unknown strong{color:#1a1a1a;background:#ececec;padding:0 6px;border:1px dotted #555;border-radius:4px}
#candidates{border:1px dotted #555;border-radius:8px;padding:6px 12px;background:#fafafa}
#candidates h2{font-size:1.05rem;margin:0 0 4px}
#candidates ol{margin:4px 0;padding-left:1.6em;overflow-wrap:anywhere}
#candidates .evidence{margin:2px 0 6px;padding-left:1.2em;color:#444;font-size:.9rem}
#shared-sessions{border:1px dashed #6A3D9A;border-radius:8px;padding:6px 12px;background:#faf7fc}
#shared-sessions h2{font-size:1.05rem;margin:0 0 4px;color:#6A3D9A}
#shared-sessions h3{font-size:.98rem;margin:8px 0 2px;overflow-wrap:anywhere}
#shared-sessions p{margin:2px 0;font-size:.9rem;overflow-wrap:anywhere}
#shared-sessions table{border-collapse:collapse;width:100%;font-size:.88rem;margin:4px 0}
#shared-sessions th,#shared-sessions td{border-top:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top;
  overflow-wrap:anywhere}
#shared-sessions td.cmd{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;max-width:28em}
#shared-sessions tr.unknown td:nth-child(2){color:#444;font-style:italic}
#shared-sessions .evidence{margin:2px 0;padding-left:1.2em;color:#444}
.content{display:flex;gap:16px;align-items:flex-start}
.picture{flex:1 1 auto;min-width:0}
#details{flex:0 0 340px;max-width:340px;border:1px solid #ddd;border-radius:8px;padding:10px 12px;
  position:sticky;top:8px;max-height:calc(100vh - 16px);overflow:auto}
#details h2{font-size:1.05rem;margin:0 0 8px;font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;
  overflow-wrap:anywhere}
#details h3{font-size:.95rem;margin:12px 0 4px}
#details dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:3px 10px;margin:0}
#details dt{color:#6b6b6b}
#details dd{margin:0;overflow-wrap:anywhere;font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.88rem}
#details ol{margin:0;padding-left:2.2em;font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.82rem;
  overflow-wrap:anywhere}
.hint{color:#6b6b6b;font-size:.9rem}
.toolbar{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:6px}
.toolbar button,.toolbar a,#expand-group{font:inherit;min-width:40px;min-height:36px;padding:4px 12px;
  border:1px solid #bbb;border-radius:6px;background:#f4f4f4;color:#1a1a1a;text-decoration:none;cursor:pointer;
  display:inline-flex;align-items:center;justify-content:center}
#widen{margin-left:auto;background:#0072B2;border-color:#0072B2;color:#fff}
#expand-group{margin:10px 0 0;background:#0072B2;border-color:#0072B2;color:#fff}
#expand-group:disabled{opacity:.6;cursor:wait}
#trace{display:block;width:100%;height:auto;max-height:80vh;border:1px solid #ddd;border-radius:8px;
  touch-action:none;user-select:none;-webkit-user-select:none;cursor:grab}
#trace .sans{font-family:"DejaVu Sans",system-ui,sans-serif}
#trace .mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace}
.node{cursor:pointer}
.node:focus{outline:none}
.node:focus-visible rect,.node.selected rect{stroke:#0072B2;stroke-width:4}
.edge{cursor:help}
.edge .hit{pointer-events:stroke}
.edge:hover .line{stroke-width:4}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 18px;padding:0;margin:8px 0 4px;font-size:.85rem}
.legend li{display:flex;align-items:center;gap:6px}
.notes{color:#6b6b6b;font-style:italic;font-size:.85rem;margin:4px 0;padding-left:1.2em;overflow-wrap:anywhere}
#tooltip{position:fixed;z-index:10;left:0;top:0;max-width:min(28rem,calc(100vw - 16px));padding:6px 9px;
  border-radius:6px;background:#1a1a1a;color:#fff;font-size:.85rem;pointer-events:none}
#tooltip[hidden]{display:none}
@media (max-width:800px){
  main{padding:8px}
  .content{flex-direction:column;align-items:stretch}
  #details{flex:none;max-width:none;position:static;max-height:none}
  #trace{max-height:70vh}
}
"""

JS = """
(() => {
  'use strict';
  const tip = document.getElementById('tooltip');
  const pointers = new Map();      // pointer id -> last [x, y]: one pans, two pinch
  let main, svg, panel, data, home, vb, travel = 0, moved = false;

  function el(tag, text) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = text;
    return e;
  }

  // (Re)attach everything inside <main>: it is replaced when a group is expanded.
  function bind() {
    main = document.querySelector('main');
    svg = document.getElementById('trace');
    panel = document.getElementById('details');
    data = JSON.parse(document.getElementById('trace-data').textContent);
    const b = svg.viewBox.baseVal;
    home = {x: b.x, y: b.y, w: b.width, h: b.height};
    vb = Object.assign({}, home);
    // a very tall picture starts at its top, as wide as the element, rather than too small to read
    const r = svg.getBoundingClientRect();
    if (r.width && home.h / home.w > 2 * r.height / r.width) vb.h = home.w * r.height / r.width;
    apply();
    svg.querySelectorAll('g.node').forEach(g => {
      g.addEventListener('click', () => { if (!moved) select(g); });
      g.addEventListener('keydown', e => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(g); }
      });
    });
    svg.querySelectorAll('g.edge').forEach(g => {
      g.addEventListener('mouseenter', e => showTip(g, e));
      g.addEventListener('mousemove', e => showTip(g, e));
      g.addEventListener('mouseleave', hideTip);
      g.addEventListener('click', e => { if (!moved) showTip(g, e); });
    });
    svg.addEventListener('pointerdown', down);
    svg.addEventListener('wheel', wheel, {passive: false});
    const centre = f => () => zoom(f, vb.x + vb.w / 2, vb.y + vb.h / 2);
    document.getElementById('zoom-in').addEventListener('click', centre(1 / 1.25));
    document.getElementById('zoom-out').addEventListener('click', centre(1.25));
    document.getElementById('zoom-fit').addEventListener('click', () => { vb = Object.assign({}, home); apply(); });
  }

  function select(g) {
    svg.querySelectorAll('g.node.selected').forEach(n => n.classList.remove('selected'));
    g.classList.add('selected');
    const id = g.dataset.id, d = data.nodes[id];
    if (!d) return;
    const dl = el('dl');
    for (const [k, v] of d.rows) dl.append(el('dt', k), el('dd', v));
    panel.replaceChildren(el('h2', d.title), dl);
    if (d.members) {
      const url = main.dataset.expandUrl;
      if (url) {
        const button = el('button', 'Expand here');
        button.id = 'expand-group';
        button.type = 'button';
        button.addEventListener('click', () => expand(id, url, button));
        panel.append(button);
      }
      const ol = el('ol');
      for (const m of d.members) ol.append(el('li', m));
      panel.append(el('h3', 'Commands in this group'), ol);
    }
    if (window.matchMedia('(max-width: 800px)').matches) panel.scrollIntoView({block: 'nearest'});
  }

  // Ask the server for the same trace with this group expanded too, and swap <main> in place.
  async function expand(id, url, button) {
    const groups = (main.dataset.expanded || '').split(',').filter(Boolean);
    if (!groups.includes(id)) groups.push(id);
    button.disabled = true;
    button.textContent = 'Expanding…';
    try {
      const res = await fetch(url.split('{groups}').join(groups.map(encodeURIComponent).join(',')),
                              {credentials: 'same-origin'});
      if (!res.ok) throw new Error(res.status + ' ' + res.statusText);
      const fresh = new DOMParser().parseFromString(await res.text(), 'text/html').querySelector('main');
      if (!fresh) throw new Error('the answer has no trace');
      main.innerHTML = fresh.innerHTML;
      for (const a of ['data-expanded', 'data-expand-url']) {
        if (fresh.hasAttribute(a)) main.setAttribute(a, fresh.getAttribute(a)); else main.removeAttribute(a);
      }
      hideTip();
      bind();
      const first = svg.querySelector('g.node[data-id="' + CSS.escape(id.slice('group:'.length)) + '"]');
      if (first) select(first);
    } catch (err) {
      button.disabled = false;
      button.textContent = 'Expand here';
      panel.append(el('p', 'Could not expand: ' + err.message));
    }
  }

  function showTip(g, e) {
    tip.textContent = g.dataset.why;
    tip.hidden = false;
    const below = e.clientY + 16 + tip.offsetHeight <= window.innerHeight;
    const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = Math.max(8, x) + 'px';
    tip.style.top = Math.max(8, below ? e.clientY + 16 : e.clientY - tip.offsetHeight - 10) + 'px';
  }
  function hideTip() { tip.hidden = true; }

  // Pan and zoom move the viewBox; its aspect never changes, so the element keeps its size.
  function apply() {
    const box = [vb.x, vb.y, vb.w, vb.h].map(v => +v.toFixed(2)).join(' ');
    svg.setAttribute('viewBox', box);
  }
  function toSvg(cx, cy) {
    return new DOMPoint(cx, cy).matrixTransform(svg.getScreenCTM().inverse());
  }
  function zoom(f, cx, cy) {
    const w = Math.min(Math.max(vb.w * f, home.w / 20), home.w * 4);
    f = w / vb.w;
    vb = {x: cx - (cx - vb.x) * f, y: cy - (cy - vb.y) * f, w: vb.w * f, h: vb.h * f};
    apply();
  }
  function wheel(e) {
    e.preventDefault();
    const p = toSvg(e.clientX, e.clientY);
    const delta = e.deltaY * (e.deltaMode === 1 ? 40 : 1);
    zoom(Math.exp(Math.max(-1, Math.min(1, delta * 0.0015))), p.x, p.y);
  }
  function down(e) {
    if (e.button > 0) return;
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 1) { travel = 0; moved = false; }
    hideTip();
  }
  function move(e) {
    const last = pointers.get(e.pointerId);
    if (!last) return;
    const now = [e.clientX, e.clientY];
    if (pointers.size === 2) {
      const other = [...pointers.entries()].find(([id]) => id !== e.pointerId)[1];
      const before = Math.hypot(last[0] - other[0], last[1] - other[1]);
      const after = Math.hypot(now[0] - other[0], now[1] - other[1]);
      const mid = toSvg((now[0] + other[0]) / 2, (now[1] + other[1]) / 2);
      if (before && after) zoom(before / after, mid.x, mid.y);
      moved = true;
    } else {
      travel += Math.abs(now[0] - last[0]) + Math.abs(now[1] - last[1]);
      if (travel > 4) {
        moved = true;
        const r = svg.getBoundingClientRect();
        const k = Math.max(vb.w / r.width, vb.h / r.height);
        vb.x -= (now[0] - last[0]) * k;
        vb.y -= (now[1] - last[1]) * k;
        apply();
      }
    }
    pointers.set(e.pointerId, now);
  }
  function up(e) { pointers.delete(e.pointerId); }

  window.addEventListener('pointermove', move);
  window.addEventListener('pointerup', up);
  window.addEventListener('pointercancel', up);
  bind();
})();
"""
