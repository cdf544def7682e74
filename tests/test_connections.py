"""Connections as evidence (issue 21): asked by destination (to:), by source (from:) and by
listening port (listen:), one match per process, each traced to a person as a command is."""

import json

import pytest

from whodid.tracer import Identity, Person, Query, Store, Tracer, ingest
from whodid.tracer.destinations import parse_destination
from whodid.tracer.render import render_text, traces_json
from whodid.tracer.trace import Target

from kit import T0, Host, ssh_session, store_with

JUMP = Host("jump-box", "10.0.0.10")
OPS = Host("ops-1", "10.0.1.20")
JIM_FP = "SHA256:jim"
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM_FP,)),))
API = "10.0.5.10"


def deploy_story(connects: int = 300):
    """jim ssh's from the jump box to ops-1, sudo's to root and runs `python3 deploy.py`,
    which opens `connects` connections to the API at 10.0.5.10:6443; bob's cron job on ops-1
    talks to another address on 443."""
    ev = []
    ev += ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += [JUMP.fork(100, 210, 201), JUMP.exec(100.01, 210, ["ssh", "ec2-user@ops-1"], uid=1001, auid=1001),
           JUMP.connect(100.05, 210, OPS.addr, 22, lport=40001)]
    ev += ssh_session(OPS, 100.5, 400, "ec2-user", 1000, JUMP.addr, 40001, JIM_FP, ses=7)
    ev += [OPS.fork(160, 410, 401), OPS.exec(160.01, 410, ["sudo", "-i"], uid=1000, euid=0, auid=1000, ses=7),
           OPS.cred(160.02, 410, 1000, 0), OPS.fork(160.03, 411, 410),
           OPS.exec(160.04, 411, ["-bash"], uid=0, auid=1000, ses=7),
           OPS.fork(200, 420, 411),
           OPS.exec(200.01, 420, ["python3", "deploy.py"], uid=0, auid=1000, ses=7)]
    ev += [OPS.connect(201 + i * 0.5, 420, API, 6443, lport=50000 + i) for i in range(connects)]
    ev += [OPS.exec(0, 900, ["/usr/sbin/cron", "-f"], snapshot=True),
           OPS.fork(300, 901, 900), OPS.exec(300.01, 901, ["curl", "https://example.org"], uid=0),
           OPS.connect(300.2, 901, "93.184.215.14", 443, lport=51000)]
    return ev


def find(store, ident=IDENT, addresses_for=None, **q):
    q.setdefault("pattern", "")
    return Tracer(store, ident, addresses_for=addresses_for).find(Query(**q))


def test_three_hundred_connects_are_one_match_with_count_and_times():
    store = store_with(deploy_story())
    (tr,) = find(store, to=parse_destination(f"{API}:6443"))
    c = tr.connections
    assert (c.count, c.first, c.last) == (300, T0 + 201, T0 + 201 + 299 * 0.5)
    assert [(p.addr, p.port, p.count) for p in c.peers] == [(API, 6443, 300)]
    # traced as a command: the process that connected, its chain, the hop, sudo, the person
    assert tr.poi.command == "python3 deploy.py"
    assert tr.attributed.user == "jim"
    assert tr.chain[0].edge == "login" and tr.chain[0].host == "jump-box"
    assert [s.host for s in tr.chain if s.edge == "ssh"] == ["ops-1"]
    assert any(s.edge == "sudo" for s in tr.chain)
    assert "connected to 10.0.5.10:6443 300 times" in render_text(Query(pattern="", to=parse_destination(API)), [tr], T0 + 400)


def test_connections_the_agent_counted_over_its_budget_count_as_many_and_stay_one_row():
    """Over a uid's connection budget the agent sends one event per (process, place, minute)
    with `count` and `last` (docs/events.md): the question counts them, the last time is the
    last counted one, and a replayed batch is still one row."""
    ev = deploy_story(2)
    counted = dict(OPS.connect(250, 420, API, 6443, lport=52000), count=5000, last=T0 + 309.5)
    store = store_with(ev + [counted])
    ingest(store, [counted])                                    # the batch sent again
    assert store.db.execute("SELECT count(*) FROM conns WHERE n IS NOT NULL").fetchone()[0] == 1
    (tr,) = find(store, to=parse_destination(f"{API}:6443"))
    c = tr.connections
    assert (c.count, c.first, c.last) == (5002, T0 + 201, T0 + 309.5)
    assert [(p.addr, p.count) for p in c.peers] == [(API, 5002)]


@pytest.mark.parametrize("extra, error", [
    ({"count": 3}, "`count` and `last` go together"),
    ({"last": T0 + 300}, "`count` and `last` go together"),
    ({"count": 0, "last": T0 + 300}, "at least one"),
    ({"count": 3, "last": T0 + 100}, "at or after the first"),
])
def test_a_counted_connection_must_say_how_many_and_when_the_last_was(extra, error):
    from whodid.tracer.events import EventError, parse_event
    with pytest.raises(EventError, match=error):
        parse_event(dict(OPS.connect(250, 420, API, 6443, lport=52000), **extra))


@pytest.mark.parametrize("spec, hits", [
    (API, 1), (f"{API}:6443", 1), (f"{API}:443", 0), ("10.0.5.0/24", 1), ("10.0.5.0/24:6443", 1),
    ("10.0.6.0/24", 0), ("0.0.0.0/0:443", 1), ("93.184.215.14", 1), ("eks-prod", 0)])
def test_destination_by_address_network_and_port(spec, hits):
    store = store_with(deploy_story(3))
    assert len(find(store, to=parse_destination(spec))) == hits


def test_pattern_and_destination_must_both_hold():
    store = store_with(deploy_story(3))
    assert len(find(store, pattern="deploy", to=parse_destination("0.0.0.0/0"))) == 1
    assert len(find(store, pattern="curl", to=parse_destination(API))) == 0
    assert [t.poi.command for t in find(store, to=parse_destination("0.0.0.0/0"))] == [
        "curl https://example.org", "python3 deploy.py", "ssh ec2-user@ops-1"]     # newest first


def test_limit_counts_groups_not_connections():
    store = store_with(deploy_story(50))
    (tr,) = find(store, to=parse_destination("0.0.0.0/0"), limit=1)
    assert tr.poi.command == "curl https://example.org"
    assert len(find(store, to=parse_destination("0.0.0.0/0"), limit=2)) == 2


def _with_names(events):
    """The recorded name d21's agent puts on a connect (`rname`), written as the store takes it."""
    store = Store.open(":memory:", create=True)
    for ev in events:
        if ev["kind"] == "connect" and ev["raddr"] == API:
            ev["rname"] = "EKS.us-east-1.amazonaws.com"
    store.write(events)
    return store


def test_a_name_matches_the_name_recorded_at_connect_time_any_case_and_globs():
    store = _with_names(deploy_story(3))
    for spec in ("eks.us-east-1.amazonaws.com:6443", "*.amazonaws.com", "EKS.US-EAST-1.amazonaws.com"):
        (tr,) = find(store, to=parse_destination(spec))
        assert tr.poi.command == "python3 deploy.py"
        assert tr.connections.peers[0].name == "EKS.us-east-1.amazonaws.com"
    assert find(store, to=parse_destination("*.amazonaws.com:443")) == []
    assert find(store, to=parse_destination("*.example.org")) == []


def test_a_name_through_the_injected_addresses_for():
    store = store_with(deploy_story(3))
    asked = []

    def addresses_for(name):
        asked.append(name)
        return [(API, "config network.names")] if name == "eks-prod" else []

    (tr,) = find(store, addresses_for=addresses_for, to=parse_destination("eks-prod:6443"))
    assert asked == ["eks-prod"]
    assert tr.connections.peers[0].name == "eks-prod"
    assert tr.connections.how == ["eks-prod -> 10.0.5.10 (config network.names)"]
    assert "(eks-prod)" in render_text(Query(pattern="", to=parse_destination("eks-prod")), [tr], T0 + 400)
    assert find(store, addresses_for=addresses_for, to=parse_destination("other")) == []
    # a network as the answer (a CIDR in config) is tested as a network
    (tr,) = find(store, addresses_for=lambda n: [("10.0.5.0/24", "config")], to=parse_destination("eks-prod"))
    assert tr.connections.count == 3


def test_connections_stay_idempotent_rows_across_replays():
    events = deploy_story(20)
    store = store_with(events)
    assert ingest(store, events).new == 0
    (tr,) = find(store, to=parse_destination(API))
    assert tr.connections.count == 20


def listen_events():
    return [OPS.exec(0, 700, ["/usr/sbin/sshd", "-D"], snapshot=True)] + ssh_session(
        OPS, 10, 400, "ec2-user", 1000, "203.0.113.7", 50123, JIM_FP, ses=7) + [
        OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["python3", "-m", "http.server", "8080"], uid=1000, auid=1000, ses=7),
        OPS._ev("listen", 20.5, pid=420, start=420000, laddr="0.0.0.0", lport=8080)]


def test_listen_is_stored_once_when_replayed_and_found_by_port():
    events = listen_events()
    store = store_with(events)
    assert ingest(store, events).new == 0
    assert ingest(store, [dict(e) for e in events if e["kind"] == "listen"]).new == 0
    assert store.counts()["conns"] == 1 and store.counts_by_host()["ops-1"]["listen"] == 1
    (tr,) = find(store, listen=8080)
    assert tr.poi.command == "python3 -m http.server 8080"
    assert tr.attributed.user == "jim"
    assert (tr.connections.direction, tr.connections.peers[0].addr, tr.connections.peers[0].port) == (
        "listen", "0.0.0.0", 8080)
    assert find(store, listen=8081) == []
    assert "listened on 0.0.0.0:8080" in render_text(Query(pattern="", listen=8080), [tr], T0 + 400)


def test_from_finds_the_session_an_outside_address_came_in_as():
    """sshd's listener accepts from 203.0.113.7 (a21's inbound accept); the login it carried is
    the per-connection sshd's: that session is the match, traced to jim by his key."""
    events = ssh_session(OPS, 10, 400, "ec2-user", 1000, "203.0.113.7", 50123, JIM_FP, ses=7)
    events.append(OPS._ev("accept", 10.05, pid=100, start=100000, laddr=OPS.addr, lport=22,
                          raddr="203.0.113.7", rport=50123))
    events.append(OPS._ev("accept", 500, pid=100, start=100000, laddr=OPS.addr, lport=22,
                          raddr="198.51.100.9", rport=40000))
    store = store_with(events)
    (tr,) = find(store, from_=parse_destination("203.0.113.7"))
    assert tr.connections.login["user"] == "ec2-user"
    assert tr.poi.pid == 400 and tr.attributed.user == "jim"
    assert len(find(store, from_=parse_destination("203.0.113.0/24:22"))) == 1
    assert find(store, from_=parse_destination("203.0.113.7:443")) == []
    # nobody logged in from 198.51.100.9: the accepting process itself is the match
    (tr,) = find(store, from_=parse_destination("198.51.100.9"))
    assert tr.poi.pid == 100 and tr.connections.login is None


def test_a_pinned_connection_match_is_that_group_and_ignores_newer_connections():
    events = deploy_story(5)
    store = store_with(events)
    tracer = Tracer(store, IDENT)
    (tr,) = tracer.find(Query(pattern="", to=parse_destination(API)))
    t = tr.target
    assert (t.kind, t.op, t.path, t.at) == ("connection", "connect", API, T0 + 203)
    ingest(store, [OPS.connect(250, 420, API, 6443, lport=52000)])
    again = tracer.pinned(t)
    assert again.connections.count == 5 and again.target == t
    # through a signed button value and back: the same seven fields, the same group
    from whodid.bot.slack.ask import Ask
    from whodid.bot.slack.buttons import View, decode, encode
    key = b"k" * 32
    back = decode(encode(View(Ask(pattern="deploy", since=T0, since_text="1d"), pin=t), key), key).pin
    assert back == t and tracer.pinned(back).connections.count == 5
    # old values read as before: an exec and a file change
    assert Target("h", "b", 1, 1, 0.0).kind == "command"
    assert Target("h", "b", 1, 1, 0.0, "write", "/etc/x").kind == "file"


def test_json_has_a_connections_section_within_version_2():
    store = store_with(deploy_story(3))
    q = Query(pattern="", to=parse_destination(f"{API}:6443"))
    out = json.loads(json.dumps(traces_json(q, Tracer(store, IDENT).find(q), T0 + 400)))
    assert out["schema"] == "whodid.trace/2"
    assert out["query"]["to"] == f"{API}:6443" and out["query"]["from"] is None and out["query"]["listen"] is None
    (m,) = out["matches"]
    c = m["connections"]
    assert (c["direction"], c["count"], c["asked"]) == ("connect", 3, f"{API}:6443")
    assert c["peers"] == [{"addr": API, "port": 6443, "name": None, "count": 3, "first": c["first"],
                           "last": c["last"], "first_ts": T0 + 201, "last_ts": T0 + 202}]
    assert [e["poi"] for e in m["execs"]] == [True]
    import re
    from pathlib import Path
    doc = (Path(__file__).parent.parent / "docs" / "trace-json.md").read_text()
    documented = {w for cell in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M) for w in re.findall(r"`(\w+)`", cell)}
    documented |= set(re.findall(r"`(\w+)`", doc[doc.index("### Connections"):doc.index("### A candidate")]))
    emitted = set(c) | set(c["peers"][0])
    assert emitted <= documented, sorted(emitted - documented)
    assert all(f"`{k}`" in doc for k in ("to", "from", "listen"))
    # a command match says null: present in every match, so readers need no guard
    cmd = traces_json(Query(pattern="deploy"), Tracer(store, IDENT).find(Query(pattern="deploy")), T0 + 400)
    assert cmd["matches"][0]["connections"] is None


def test_one_of_to_from_listen_at_a_time():
    with pytest.raises(ValueError, match="one of to:, from: or listen:"):
        Query(pattern="", to=parse_destination(API), listen=80).connection


def test_the_picture_page_and_slack_draw_the_connection():
    """The destination as a box (address, port, name) with an arrow from the process, as an ssh
    hop is drawn; the page's box says its facts; Slack's answer says the connection line."""
    from whodid.bot.slack import blocks
    from whodid.bot.slack.ask import Ask
    from whodid.bot.slack.buttons import View
    from whodid.tracer.render.html import render_html
    from whodid.tracer.render.image import render_png
    from whodid.tracer.render.layout import layout

    store = store_with(deploy_story(300))
    (tr,) = find(store, addresses_for=lambda n: [(API, "config network.names")], to=parse_destination("eks-prod:6443"))
    lay = layout(tr, T0 + 400)
    (box,) = [b for b in lay.boxes if b.role == "destination"]
    assert box.title == "10.0.5.10:6443 (eks-prod)" and box.meta.startswith("300 times")
    (link,) = [lk for lk in lay.links if lk.kind == "connect"]
    assert (link.src, link.dst, link.label) == (tr.poi.node, box.id, "connected 300 times")
    assert lay.lanes[box.lane] == "to eks-prod:6443"
    assert render_png(tr, T0 + 400).startswith(b"\x89PNG")
    page = render_html(tr, T0 + 400)
    assert 'data-id="conn:0"' in page and "connected to 10.0.5.10:6443 (300 times" in page
    ask = Ask(pattern="", host=None, user=None, since=T0, until=None, since_text="1d")
    text, out = blocks.summary(tr, View(ask), 1, T0 + 400, lambda v: "x")
    assert "connected to 10.0.5.10:6443 (eks-prod) 300 times" in text
    assert any("connected to 10.0.5.10:6443 (eks-prod) 300 times" in json.dumps(b) for b in out)


def test_a_recorded_name_is_shown_as_data_never_obeyed():
    """rname comes from a host (a DNS answer an attacker may control): an escape sequence, a
    bidi override or a Slack mention in it is shown, not acted on, in every view."""
    from whodid.bot.slack import blocks
    from whodid.bot.slack.ask import Ask
    from whodid.bot.slack.buttons import View
    from whodid.tracer.render.html import render_html

    store = Store.open(":memory:", create=True)
    events = deploy_story(2)
    for ev in events:
        if ev["kind"] == "connect" and ev["raddr"] == API:
            ev["rname"] = "evil\x1b[2J\u202e<!channel><script>x</script>"
    store.write(events)
    (tr,) = find(store, to=parse_destination(API))
    text = render_text(Query(pattern="", to=parse_destination(API)), [tr], T0 + 400)
    assert "\x1b" not in text and "\u202e" not in text and "\\x1b[2J\\u202e" in text
    page = render_html(tr, T0 + 400)
    assert "<script>x</script>" not in page and "\x1b" not in page
    _, out = blocks.summary(tr, View(Ask(pattern="", since=T0, since_text="1d")), 1, T0 + 400, lambda v: "x")
    assert "<!channel>" not in json.dumps(out) and "&lt;!channel&gt;" in json.dumps(out)


def test_from_and_listen_are_drawn_too():
    from whodid.tracer.render.html import render_html
    from whodid.tracer.render.image import render_png
    from whodid.tracer.render.layout import layout

    events = listen_events() + [OPS._ev("accept", 10.05, pid=100, start=100000, laddr=OPS.addr, lport=22,
                                        raddr="203.0.113.7", rport=50123)]
    store = store_with(events)
    (came,) = find(store, from_=parse_destination("203.0.113.7"))
    (opened,) = find(store, listen=8080)
    for tr, lane, src_is_box in ((came, "from 203.0.113.7", True), (opened, "listening :8080", False)):
        lay = layout(tr, T0 + 400)
        (box,) = [b for b in lay.boxes if b.role == "destination"]
        (link,) = [lk for lk in lay.links if lk.kind == "connect"]
        assert lay.lanes[box.lane] == lane and (link.src == box.id) == src_is_box
        assert render_png(tr, T0 + 400).startswith(b"\x89PNG") and 'data-id="conn:0"' in render_html(tr, T0 + 400)
    text = render_text(Query(pattern="", from_=parse_destination("203.0.113.7")), [came], T0 + 400)
    assert "came in from 203.0.113.7 to port 22 once" in text and "carried the ssh login as ec2-user" in text


def test_a_pinned_value_naming_no_such_connection_shows_nothing():
    """A signed value is checked field by field (buttons.pin_from), but what it pins may be gone
    or never have been: no group, no answer - never another process's connections."""
    store = store_with(deploy_story(3))
    tracer = Tracer(store, IDENT)
    (tr,) = tracer.find(Query(pattern="", to=parse_destination(API)))
    t = tr.target
    for other in (Target(t.host, t.boot, t.pid, t.start, t.at, "connect", "not a destination!"),
                  Target(t.host, t.boot, t.pid, t.start, t.at, "listen", "eighty"),
                  Target(t.host, t.boot, t.pid, t.start, t.at, "connect", "10.9.9.9"),
                  Target(t.host, t.boot, t.pid, t.start, T0 + 1, "connect", API),         # before the first
                  Target(t.host, t.boot, 901, 901000, t.at, "connect", API)):             # curl: not to the API
        assert tracer.pinned(other) is None, other
