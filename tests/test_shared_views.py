"""Issue 19, item 4: every view shows a shared session - a box for the tmux or screen server or
the ssh master, edges from the clients that used it - and keeps the confidence contract (a
shared account, root or a bare uid is never shown as a person). Traces are real Tracer
answers from small hand-made stores; the shared sessions on them are made by hand from the
types (tracer/sharing.py), as the Tracer fills them."""

from __future__ import annotations

import json
import struct

import pytest
from kit import T0, Host, ssh_session, store_with
from test_abuse_slack import CONTROLS, MENTIONS
from test_html import Page
from test_trace import IDENT, JIM_FP, shared_account_story

from whodid.bot.canary import alerts
from whodid.bot.slack import blocks
from whodid.bot.slack.ask import Ask
from whodid.bot.slack.buttons import View
from whodid.tracer import Query, Tracer, stitch
from whodid.tracer.render.html import render_html
from whodid.tracer.render.image import DPI, figure_size, paint
from whodid.tracer.render.jsonout import traces_json
from whodid.tracer.render.layout import layout
from whodid.tracer.render.text import render_trace
from whodid.tracer.sharing import ASKED, ATTACHED, INJECTED, SCREEN, SSH_MASTER, TMUX, SessionClient, SharedSession
from whodid.tracer.stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN, Attribution, Candidate

HOST = Host("host-b", "10.0.0.5")
NOW = T0 + 10_000
ASK = Ask(pattern="kubectl", since=T0, until=None, since_text="24h")
HOSTILE = "</script><script>alert(1)</script> <!channel> <@U123> \x1b[2J \u202e" + "x" * 5000


def person(name: str, account: str = "ec2-user", level: str = OBSERVED, t: float = 1) -> Attribution:
    return Attribution(user=name, host="host-b", source="203.0.113.7", login_time=T0 + t,
                       how=f"logged in as {account} with {name}'s key", account=account, confidence=level)


def nobody(account: str = "ubuntu") -> Attribution:
    """A chain that stops at a shared account: the account is kept, the person is unknown."""
    return Attribution(user=PERSON_UNKNOWN, host="host-b", source="198.51.100.9", login_time=T0 + 5,
                       how=f"logged in as {account}; {account} is a shared account, so no person is named",
                       account=account, confidence=UNKNOWN)


def client(role: str, who: Attribution, pid: int, command: str, since: float | None, until: float | None = None,
           host: str = "host-b") -> SessionClient:
    return SessionClient(role=role, proc=pid, host=host, pid=pid, command=command,
                         since=None if since is None else T0 + since, until=None if until is None else T0 + until,
                         who=who, summary=f"{stitch.PERSON_UNKNOWN if not who.known else who.user} -> {host} "
                                          f"({who.account})")


def tmux_events() -> list[dict]:
    """jim logs in to host-b as ec2-user and starts tmux; the server (a fork of the client, no
    exec) starts a shell in which `kubectl delete ns prod` runs."""
    ev = ssh_session(HOST, 0, 400, "ec2-user", 1000, "203.0.113.7", 5, JIM_FP, ses=7)
    return ev + [HOST.fork(10, 410, 401), HOST.exec(10.01, 410, ["tmux", "new", "-s", "ops"], uid=1000, auid=1000,
                                                    ses=7),
                 HOST.fork(10.2, 411, 410),
                 HOST.fork(10.3, 412, 411), HOST.exec(10.31, 412, ["-bash"], uid=1000, auid=1000, ses=7),
                 HOST.fork(300, 413, 412),
                 HOST.exec(300.01, 413, ["kubectl", "delete", "ns", "prod"], uid=1000, auid=1000, ses=7)]


def unshared():
    """The same chain with no shared session on it: jim's own client is attached to his tmux
    (the Tracer fills Trace.shared), so the baseline is another trace with none."""
    tr = traced(shared_account_story(), "delete-cluster")
    assert tr.shared == []
    return tr


def traced(events, pattern="kubectl"):
    (tr,) = Tracer(store_with(events), IDENT).find(Query(pattern=pattern, limit=1))
    return tr


def server_step(tr) -> int:
    """The tmux step: the server is a fork of it that never exec'd, shown as its image."""
    return next(i for i, s in enumerate(tr.chain) if s.command.startswith("tmux"))


def tmux_two_people():
    """jim started the server; jim and bob were both attached when it ran: person unknown, both candidates."""
    tr = traced(tmux_events())
    jim, bob = person("jim"), person("bob", t=150)
    tr.shared = [SharedSession(
        kind=TMUX, host="host-b", proc=411, pid=411, path="/tmp/tmux-1000/default", step=server_step(tr),
        starter=jim, note="tmux server started by jim; jim and bob were attached",
        clients=[client(ATTACHED, jim, 420, "tmux attach -t ops", 100),
                 client(ATTACHED, bob, 520, "tmux attach -t ops", 200.5, 4000)])]
    tr.attributed = Attribution(
        user=PERSON_UNKNOWN, host="host-b", source=None, login_time=None, account="ec2-user", confidence=UNKNOWN,
        how="ran in a tmux session with 2 people attached",
        candidates=[Candidate("jim", "ec2-user", "host-b", T0 + 1, "203.0.113.7", JIM_FP,
                              ["attached to tmux server pid 411 from 22:15:00", "started the tmux server"]),
                    Candidate("bob", "ec2-user", "host-b", T0 + 150, "198.51.100.4", None,
                              ["attached to tmux server pid 411 from 22:16:40 to 23:19:20"])])
    tr.summary = stitch.summary(tr.chain, tr.attributed)
    return tr


def screen_injected():
    """A screen session nobody was attached to, with keys sent into it by a client whose chain
    stops at the shared account ubuntu."""
    tr = traced(tmux_events())
    tr.shared = [SharedSession(
        kind=SCREEN, host="host-b", proc=411, pid=411, path="/run/screen/S-ubuntu/411.ops", step=server_step(tr),
        starter=person("jim"), note="keys sent into jim's screen session by a client of ubuntu",
        clients=[client(INJECTED, nobody("ubuntu"), 620, "screen -S ops -X stuff 'kubectl delete ns prod\\n'", 299)])]
    tr.attributed = Attribution(user=PERSON_UNKNOWN, host="host-b", source=None, login_time=None, account="ubuntu",
                                confidence=UNKNOWN, how="keys were sent into the screen session by ubuntu's client")
    tr.summary = stitch.summary(tr.chain, tr.attributed)
    return tr


def ssh_master_asker():
    """bob's ssh on the jump box asked jim's master connection for the session to config-server."""
    tr = traced(shared_account_story(), "delete-cluster")
    hop = next(i for i, s in enumerate(tr.chain) if i and s.edge == "ssh")
    jim, bob = person("jim", "jim"), person("bob", "bob", INFERRED)
    tr.shared = [SharedSession(
        kind=SSH_MASTER, host="jump-box", proc=210, pid=210, path="/home/jim/.ssh/cm-ec2-user@config-server:22",
        step=hop, starter=jim, note="over jim's master connection (pid 210 on jump-box), asked for by bob's ssh (pid 310)",
        clients=[client(ASKED, bob, 310, "ssh -S /home/jim/.ssh/cm-ec2-user@config-server:22 config-server", 1000.4,
                        host="jump-box")])]
    tr.attributed = bob
    tr.summary = stitch.summary(tr.chain, bob)
    return tr


def many_clients(n: int):
    tr = tmux_two_people()
    ss = tr.shared[0]
    ss.clients = [client(ATTACHED, person(f"p{i}", t=100 + i) if i % 2 else nobody(), 700 + i,
                         f"tmux attach -t ops {'y' * 80}", 100 + i) for i in range(n)]
    return tr


def hostile():
    tr = tmux_two_people()
    ss = tr.shared[0]
    ss.path = "/tmp/</script>\x1b]0;owned\x07"
    ss.host = 'web<1>&"x'
    ss.note = "note <!here> </script>"
    ss.clients.append(client(INJECTED, nobody("<!channel>`*ops*`"), 666, HOSTILE, 250, host="<@U999>"))
    return tr


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def matches(tr) -> dict:
    (m,) = traces_json(Query(pattern="kubectl"), [tr], NOW)["matches"]
    return m


# --- JSON -------------------------------------------------------------------------------

def test_json_has_shared_sessions_always_and_empty_when_there_are_none():
    tr = traced(shared_account_story(), "delete-cluster")
    assert matches(tr)["shared_sessions"] == []


def test_json_shows_the_tmux_server_who_started_it_and_both_people_attached():
    tr = tmux_two_people()
    (ss,) = matches(tr)["shared_sessions"]
    assert (ss["kind"], ss["host"], ss["pid"], ss["path"]) == ("tmux", "host-b", 411, "/tmp/tmux-1000/default")
    assert matches(tr)["chain"][ss["step"]]["command"] == "tmux new -s ops"
    assert ss["started_by"] == {"person": "jim", "confidence": "observed", "account": "ec2-user"}
    assert [(c["role"], c["person"], c["pid"], c["since"], c["until"]) for c in ss["clients"]] == [
        ("attached", "jim", 420, "2023-11-14T22:15:00.000Z", None),
        ("attached", "bob", 520, "2023-11-14T22:16:40.500Z", "2023-11-14T23:20:00.000Z")]
    assert set(ss) == {"kind", "host", "pid", "path", "step", "note", "started_by", "clients"}
    assert set(ss["clients"][0]) == {"role", "host", "pid", "command", "since", "until", "person", "confidence",
                                     "account", "summary"}


def test_json_never_names_a_shared_account_as_the_person_of_a_client():
    (ss,) = matches(screen_injected())["shared_sessions"]
    (c,) = ss["clients"]
    assert ss["kind"] == "screen" and c["role"] == "injected"
    assert c["person"] is None and c["account"] == "ubuntu" and c["confidence"] == "unknown"
    (ss,) = matches(ssh_master_asker())["shared_sessions"]
    (c,) = ss["clients"]
    assert (ss["kind"], c["role"], c["person"], c["confidence"]) == ("ssh-master", "asked", "bob", "inferred")
    assert ss["started_by"]["person"] == "jim"


def test_the_json_doc_describes_the_shared_session_shape():
    import re
    from pathlib import Path
    doc = (Path(__file__).parent.parent / "docs" / "trace-json.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    (ss,) = matches(tmux_two_people())["shared_sessions"]
    emitted = {"shared_sessions"} | set(ss) | set(ss["started_by"]) | set(ss["clients"][0])
    assert emitted <= documented, f"undocumented: {sorted(emitted - documented)}"


# --- text -------------------------------------------------------------------------------

def test_text_says_the_session_who_started_it_and_everyone_attached():
    out = render_trace(tmux_two_people(), NOW)
    assert ("Shared session: tmux server pid 411 on host-b, started by jim; attached when it ran: "
            "jim (from 22:15:00, still attached), bob (from 22:16:40 to 23:20:00)") in out
    assert "  socket /tmp/tmux-1000/default" in out
    assert "  - bob: attached from 22:16:40 to 23:20:00; `tmux attach -t ops` pid 520 on host-b" in out
    # under the chain, before the notes
    assert out.index("<== matched") < out.index("Shared session:")
    assert "Shared session" not in render_trace(unshared(), NOW)


def test_text_words_injected_and_asked_clients_and_names_no_shared_account_as_a_person():
    out = render_trace(screen_injected(), NOW)
    assert "screen server pid 411 on host-b, started by jim; sent keys: person unknown (account ubuntu, at 22:18:19)" in out
    assert "  - person unknown (account ubuntu): sent keys at 22:18:19;" in out
    assert "ubuntu:" not in out and "ubuntu (" not in out and "typed" not in out
    out = render_trace(ssh_master_asker(), NOW)
    assert ("Shared session: ssh master connection pid 210 on jump-box, started by jim; asked the master for this "
            "session: bob (inferred, at 22:30:00)") in out


def test_text_of_a_hostile_client_is_escaped_and_short():
    out = render_trace(hostile(), NOW)
    for bad in ("\x1b", "\u202e", "\x07"):
        assert bad not in out, repr(bad)
    assert "x" * 100 not in out
    assert "person unknown (account <!channel>`*ops*`)" in out


# --- picture ----------------------------------------------------------------------------

def test_picture_draws_the_session_beside_its_step_with_a_box_per_client():
    tr = tmux_two_people()
    lay = layout(tr, NOW)
    (ss,) = lay.sessions
    step = tr.chain[tr.shared[0].step]
    assert ss.at == step.node and ss.row == lay.box(step.node).row
    assert ss.title == "tmux server (pid 411) started by jim"
    assert [c.title for c in ss.clients] == ["jim, attached 22:15–", "bob, attached 22:16–23:20"]
    assert [c.row for c in ss.clients] == [ss.row + 1, ss.row + 2]
    assert lay.columns == 2 and lay.side == 1 and figure_size(lay)[0] == 2 * 3.7 + 0.5
    without = layout(unshared(), NOW)
    assert without.sessions == [] and without.side == 0


def test_picture_names_no_shared_account_as_the_person_of_a_client():
    (ss,) = layout(screen_injected(), NOW).sessions
    (c,) = ss.clients
    assert c.title == "person unknown, sent keys 22:18" and not c.known
    assert c.meta.startswith("account ubuntu · screen -S ops") and "ubuntu," not in c.title
    (ss,) = layout(ssh_master_asker(), NOW).sessions
    assert ss.title == "ssh master (pid 210) started by jim"
    assert [c.title for c in ss.clients] == ["bob, asked the master 22:30"]


@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_picture_stays_readable_with_0_1_3_and_8_clients(n):
    tr = many_clients(n)
    lay = layout(tr, NOW)
    (ss,) = lay.sessions
    drawn = [c for c in ss.clients if c.role != "more"]
    assert len(drawn) == (n if n <= 5 else 4)
    if n > 5:
        assert ss.clients[-1].title == f"+{n - 4} more clients"
    if n == 0:
        assert ss.meta.startswith("no client attached")
    # one row each, under the session, inside the picture
    rows = [ss.row] + [c.row for c in ss.clients]
    assert rows == list(range(ss.row, ss.row + len(rows))) and lay.rows > rows[-1]
    data = paint(lay)
    w, h = figure_size(lay)
    assert png_size(data) == (round(w * DPI), round(h * DPI))


def test_picture_with_a_session_differs_and_a_hostile_one_renders():
    tr = traced(tmux_events())
    assert paint(layout(tr, NOW)) != paint(layout(tmux_two_people(), NOW))
    lay = layout(hostile(), NOW)
    (ss,) = lay.sessions
    assert all(len(c.meta) <= 44 and "\x1b" not in c.meta for c in ss.clients)
    assert paint(lay)[:4] == b"\x89PNG"


def test_two_sessions_on_one_chain_do_not_overlap():
    tr = tmux_two_people()
    tr.shared.append(SharedSession(kind=SCREEN, host="host-b", proc=412, pid=412, path=None, step=server_step(tr) + 1,
                                   starter=nobody(), clients=[client(ATTACHED, person("bob"), 530, "screen -x", 20)]))
    a, b = layout(tr, NOW).sessions
    assert b.row > max(c.row for c in a.clients)
    assert b.title == "screen server started by person unknown" and b.meta.startswith("pid 412 · account ubuntu")


# --- page -------------------------------------------------------------------------------

def test_page_draws_the_session_and_its_clients_with_edges_and_lists_them():
    import xml.etree.ElementTree as ET
    tr = tmux_two_people()
    text = render_html(tr, NOW)
    page = Page(text)
    step = tr.chain[tr.shared[0].step].node
    (session,) = page.all("g", "session")
    assert session["data-id"] == "shared:0"
    clients = page.all("g", "client")
    assert [a["data-id"] for a in clients if "node" in a["class"]] == ["shared:0:client:0", "shared:0:client:1"]
    edges = {(a["data-src"], a["data-dst"]) for a in page.all("g", "shared")}
    assert edges == {(step, "shared:0"), ("shared:0:client:0", "shared:0"), ("shared:0:client:1", "shared:0")}
    assert "was attached to the tmux server, from 22:16:40 to 23:20:00" in page.edge_titles[("shared:0:client:1", "shared:0")]
    nodes = page.data()["nodes"]
    assert ["person", "bob"] in nodes["shared:0:client:1"]["rows"]
    assert ["started by", "jim"] in nodes["shared:0"]["rows"]
    svg = text[text.index('<svg id="trace"'):text.index("</svg>") + 6]
    ET.fromstring(svg)
    assert "shared session (tmux, screen, ssh master) and its clients" in text
    (section,) = [a for t, a in page.tags if a.get("id") == "shared-sessions"]
    assert len(page.all("tr", "client")) == 2
    assert "<h3>tmux server pid 411 on host-b, started by jim</h3>" in text
    assert 'id="shared-sessions"' not in render_html(unshared(), NOW)


def test_page_names_no_shared_account_as_a_person():
    text = render_html(screen_injected(), NOW)
    page = Page(text)
    (row,) = page.all("tr", "client")
    assert "unknown" in row["class"].split()
    assert "<td>person unknown (account ubuntu)</td>" in text
    assert ["person", "person unknown (account ubuntu)"] in page.data()["nodes"]["shared:0:client:0"]["rows"]


def test_page_escapes_a_hostile_shared_session():
    text = render_html(hostile(), NOW)
    assert "<script>alert" not in text and "</script><script>" not in text and "<!channel>" not in text
    assert "<!here>" not in text and "<@U" not in text
    for bad in ("\x1b", "\u202e", "\x07"):
        assert bad not in text, repr(bad)
    page = Page(text)
    assert [a.get("type") for t, a in page.tags if t == "script"] == ["application/json", None]
    assert all(not k.startswith("on") for _, a in page.tags for k in a)
    assert "x" * 400 not in text.split('id="trace-data"')[0]          # the table shortens a long command
    assert page.data()["nodes"]["shared:0:client:2"]["title"].endswith("x" * 100)   # the details have it whole


# --- Slack ------------------------------------------------------------------------------

def shared_lines(tr) -> list[str]:
    _, bl = blocks.summary(tr, View(ASK), 1, NOW, lambda view: "v")
    return [b["elements"][0]["text"] for b in bl if b["type"] == "context" and "Shared session" in b["elements"][0]["text"]]


def test_slack_answer_has_a_line_per_shared_session_with_its_clients():
    (line,) = shared_lines(tmux_two_people())
    assert line.startswith(":busts_in_silhouette: *Shared session:* `tmux server pid 411 on host-b`, started by `jim`")
    assert ("*attached when it ran:* `jim (from 22:15:00, still attached)` via `tmux attach -t ops`, "
            "`bob (from 22:16:40 to 23:20:00)` via `tmux attach -t ops`") in line
    (line,) = shared_lines(ssh_master_asker())
    assert "*asked the master for this session:* `bob (inferred, at 22:30:00)` via `ssh -S /home/jim/" in line
    assert shared_lines(unshared()) == []
    _, thread = blocks.chain(tmux_two_people(), View(ASK), 1, NOW)
    assert "Shared session: tmux server pid 411 on host-b" in json.dumps(thread)


def test_slack_names_no_shared_account_as_the_person_of_a_client():
    (line,) = shared_lines(screen_injected())
    assert "*sent keys:* `person unknown (account ubuntu, at 22:18:19)` via `screen -S ops -X stuff" in line
    assert "`ubuntu" not in line


def test_slack_shared_session_is_escaped_shortened_and_within_limits():
    (line,) = shared_lines(hostile())
    for bad in MENTIONS + CONTROLS + ("<script>", "</script>"):
        assert bad not in line, bad
    assert "x" * 100 not in line and "`*ops*`" not in line
    tr = many_clients(8)
    tr.shared *= 5
    _, bl = blocks.summary(tr, View(ASK), 1, NOW, lambda view: "v")
    lines = shared_lines(tr)
    assert len(lines) == 3 and all("and 3 more clients in the chain in the thread" in x for x in lines)
    assert "and 2 more shared sessions in the chain in the thread" in json.dumps(bl)
    assert len(bl) <= blocks.MAX_BLOCKS
    assert all(len(e["text"]) <= blocks.MAX_SECTION for b in bl if b["type"] == "context" for e in b["elements"])


def test_a_canary_alert_says_the_suspects_shared_session():
    tr = screen_injected()
    suspect = alerts.Suspect(tr, View(ASK), 60.0, "matches `kubectl`")
    (ss,) = alerts.suspect_json(suspect)["shared_sessions"]
    assert ss["clients"][0]["person"] is None and ss["clients"][0]["account"] == "ubuntu"
    (said,) = alerts.shared_said(tr)
    assert said.startswith("shared session: screen server pid 411 on host-b, started by jim; sent keys: "
                           "person unknown (account ubuntu")
    assert len(alerts.shared_said(hostile())[0]) <= 416


def test_a_session_at_a_step_off_the_chain_is_drawn_beside_the_matched_command():
    """A step index the chain does not have (a Tracer bug) must not break every view."""
    tr = tmux_two_people()
    tr.shared[0].step = len(tr.chain) + 3
    (ss,) = layout(tr, NOW).sessions
    assert ss.at == tr.poi.node
    assert paint(layout(tr, NOW))[:4] == b"\x89PNG" and "shared:0" in render_html(tr, NOW)


def test_the_page_with_a_shared_session_keeps_the_content_security_policy():
    text = render_html(hostile(), NOW, nonce="n0nce")
    page = Page(text)
    assert " style=" not in text and all(not k.startswith("on") for _, a in page.tags for k in a)


def test_text_lists_a_dozen_clients_and_says_how_many_more():
    tr = many_clients(30)
    text = render_trace(tr, NOW)
    (ss,) = traces_json(Query(pattern="kubectl"), [tr], NOW)["matches"][0]["shared_sessions"]
    assert len(ss["clients"]) == 30                       # the JSON keeps every one
    assert "... and 18 more clients (--json or --html lists them all)" in text
    assert text.count(": attached ") == 12
