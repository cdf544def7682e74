"""Issue 17, an adversary's review of the contract: what the JSON (whodid.trace/2, the canary
alert's file, the change review's) says about an unknown person must match what the views
say - "person unknown", never an account - and docs/trace-json.md must describe every nested
shape a match emits, candidates included. Traces come from hand-made fixtures: root logs in
by ssh (root is never a person), or a cron job carries root's login uid while root is logged in."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kit import T0, Host, ssh_session, store_with

from whodid.bot.canary import alerts
from whodid.bot.slack.buttons import View
from whodid.bot.slack.ask import Ask
from whodid.bot.changes import render_text as review_text, review_json
from whodid.tracer import Query, Tracer
from whodid.tracer.changes import parse_rules, review
from whodid.tracer.render.confidence import who_can
from whodid.tracer.render.jsonout import traces_json
from whodid.tracer.render.text import render_trace

WEB = Host("web-1", "10.0.0.3")
DB = Host("db-1", "10.0.0.4")
NOW = T0 + 1000


def root_login(h: Host = WEB, cmd=("rm", "-rf", "/srv")) -> list[dict]:
    """root logs in by ssh with no key recorded and runs a command: person unknown, the login its candidate."""
    ev = ssh_session(h, 0, 400, "root", 0, "203.0.113.7", 5, ses=7)
    return ev + [h.fork(100, 450, 401), h.exec(100.1, 450, list(cmd), uid=0, auid=0, ses=7)]


def cron_with_roots_uid() -> list[dict]:
    """A cron job carrying root's login uid while root is logged in: the Tracer gathers the candidate."""
    ev = ssh_session(WEB, 0, 400, "root", 0, "203.0.113.7", 5, ses=7)
    return ev + [WEB.exec(0, 50, ["/usr/sbin/cron", "-f"], snapshot=True), WEB.fork(100, 60, 50),
                 WEB.exec(100.1, 60, ["rm", "-rf", "/srv"], uid=0, auid=0, ses=9)]


def matches(events, pattern="rm"):
    q = Query(pattern=pattern)
    trs = Tracer(store_with(events)).find(q)
    return trs, traces_json(q, trs, NOW)["matches"]


def test_a_candidate_whose_account_names_no_one_has_no_person_in_the_json():
    """The JSON said `"person": "root"` for the candidate login of root (or of a shared account):
    the account the issue says is never the person, named as one to every consumer of the
    contract, while the text shows it as `root@web-1`."""
    for events in (root_login(), cron_with_roots_uid()):
        trs, (m,) = matches(events)
        assert m["confidence"] == "unknown" and m["attributed_to"]["user"] is None
        (c,) = m["candidates"]
        assert c["person"] is None and c["account"] == "root", c
        assert "1. root@web-1, logged in" in render_trace(trs[0], NOW)
        suspect = alerts.Suspect(trs[0], View(Ask(pattern="rm", since=T0, until=None, since_text="24h")), 60.0, "why")
        (a,) = alerts.suspect_json(suspect)["candidates"]
        assert a["person"] is None and a["account"] == "root"
        assert who_can(trs[0].attributed.candidates[0]) == "root@web-1"


def test_the_json_doc_describes_every_nested_shape_a_match_emits():
    """tests/test_trace.py compares the top level, attributed_to, a step and a gap; a candidate,
    an exec, a step's login, a change and the graph's nodes and edges were not compared."""
    doc = (Path(__file__).parent.parent / "docs" / "trace-json.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    ev = root_login() + [WEB.exec(100.2, 450, ["rm", "-rf", "/srv/b"], uid=0, auid=0, ses=7)]
    _, (m,) = matches(ev)
    emitted = set(m["candidates"][0]) | set(m["execs"][0]) | set(m["chain"][0]["login"])
    emitted |= set(m["graph"]["nodes"][0]) | set(m["graph"]["edges"][0])
    ev = root_login() + [{**WEB.file(100.5, 450, "write", "/etc/passwd")}]
    _, (m,) = matches(ev, "/etc/passwd")
    emitted |= set(m["poi"]["change"])
    assert emitted <= documented, f"undocumented: {sorted(emitted - documented)}"


def test_the_change_review_says_person_unknown_as_the_trace_json_does():
    """The review's JSON said `"person": "person unknown"` (a string where whodid.trace/2 says
    null) with no confidence, and its headline counted the unknown as one person: root on
    web-1 and root on db-1 read as "2 changes by 1 person"."""
    r = review(Tracer(store_with(root_login(WEB) + root_login(DB))), parse_rules({}), T0, NOW)
    assert len(r.changes) == 2
    for c in review_json(r)["changes"]:
        assert c["person"] is None and c["confidence"] == "unknown" and c["account"] == "root"
    assert "by 1 person" not in r.headline()
    assert r.headline() == "2 changes (2 unplanned), the person unknown for 2, on 2 hosts"
    out = review_text(r, NOW)
    assert "  person unknown (as root) - ssh publickey as root" in out


def inferred_trace():
    """jim's shell was not recorded: terraform is joined to his login by audit session (inferred)."""
    ev = ssh_session(WEB, 0, 400, "jim", 1001, "203.0.113.7", 5, ses=7)
    ev += [WEB.exec(100, 450, ["terraform", "destroy"], uid=1001, auid=1001, ses=7)]
    (tr,) = Tracer(store_with(ev)).find(Query(pattern="terraform"))
    assert tr.attributed.confidence == "inferred"
    return tr


def observed_trace():
    ev = ssh_session(WEB, 0, 400, "jim", 1001, "203.0.113.7", 5, ses=7)
    ev += [WEB.fork(100, 450, 401), WEB.exec(100.1, 450, ["terraform", "destroy"], uid=1001, auid=1001, ses=7)]
    (tr,) = Tracer(store_with(ev)).find(Query(pattern="terraform"))
    assert tr.attributed.confidence == "observed"
    return tr


def test_an_inferred_person_is_said_inferred_in_one_line_views():
    """The one-line views - a canary alert's suspects (text and Slack), the "other matches" list,
    the picture's title in Slack, the answer's notification text - said "jim ran ..." alike for
    an inferred and an observed answer: at 3 am the page that names jim must say it is a guess."""
    from whodid.bot.slack import blocks
    from whodid.bot.canary.checks import Canary, Result, Suspects
    ask = Ask(pattern="terraform", since=T0, until=None, since_text="24h")
    inf, obs = inferred_trace(), observed_trace()
    assert blocks.headline(inf, NOW).startswith("jim (inferred) ran `terraform destroy`")
    assert blocks.headline(obs, NOW).startswith("jim ran `terraform destroy`")
    text, _ = blocks.summary(inf, View(ask), 1, NOW, lambda v: "v")
    assert text.startswith("jim ran terraform destroy") and "(confidence inferred)" in text
    text, _ = blocks.summary(obs, View(ask), 1, NOW, lambda v: "v")
    assert "confidence" not in text
    canary = Canary(name="web", check={"type": "http"}, every=60, suspects=Suspects(commands=("terraform",)))
    state = alerts.State(name="web", status="failing", since=NOW, failures=3)
    suspect = alerts.Suspect(inf, View(ask, 0, 0, inf.target), 60.0, "matches `terraform`")
    said = alerts.alert_text(canary, state, Result(False, "502"), [suspect], [], NOW)
    assert "1. jim (inferred) ran `terraform destroy`" in said
    _, bl = alerts.alert_blocks(canary, state, Result(False, "502"), [suspect], [], NOW, lambda v: "v")
    assert "jim (inferred) ran" in json.dumps(bl)
    assert alerts.suspect_json(suspect)["confidence"] == "inferred"


def test_candidate_counts_read_as_english():
    """"(confidence unknown, 1 candidates)" in the notification text."""
    from whodid.bot.slack import blocks
    (tr,), _ = matches(root_login())
    text, _ = blocks.summary(tr, View(Ask(pattern="rm", since=T0, until=None, since_text="24h")), 1, NOW,
                             lambda v: "v")
    assert "(confidence unknown, 1 candidate)" in text


def test_the_picture_dates_a_candidate_who_logged_in_on_another_day():
    """Candidates reach back two weeks (OPEN_LOGIN_HORIZON), and the picture showed only the
    clock: a login three days before read as one minutes before."""
    from whodid.tracer.render.layout import layout
    from whodid.tracer.stitch import Candidate
    (tr,), _ = matches(root_login())
    old = Candidate("jim", "ec2-user", "web-1", tr.poi.start - 3 * 86400, None, None, ["loginuid 1000"])
    same = Candidate("bob", "ec2-user", "web-1", tr.poi.start - 60, None, None, ["loginuid 1000"])
    tr.attributed.candidates = [old, same]
    lay = layout(tr, NOW)
    assert lay.candidates[0].startswith("jim (ec2-user@web-1) · 11-11 22:15:00 ·"), lay.candidates
    assert lay.candidates[1].startswith("bob (ec2-user@web-1) · 22:14:00 ·"), lay.candidates


def test_a_login_with_no_key_is_not_told_to_map_its_key():
    """"root is a shared account and its key is not mapped to a person: add it under `people`"
    for a login that recorded no key: there is no key to add."""
    (tr,), _ = matches(root_login())
    said = " ".join(tr.notes)
    assert "its key is not mapped" not in said and "no key was recorded for the login" in said


def test_the_how_line_never_starts_with_the_account_of_an_unknown_answer():
    """stitch.summary read `who.user`: an unknown answer whose user still held the account
    (as before issue 17) was summed up as "root -> web-1" in the How line, Slack and alerts."""
    from whodid.tracer import stitch
    (tr,), _ = matches(root_login())
    tr.attributed.user = "root"
    assert stitch.summary(tr.chain, tr.attributed).startswith("person unknown -> web-1")


def test_slack_end_to_end_an_inferred_answer_says_so_in_its_notification_and_picture_title(monkeypatch, tmp_path):
    """Through the real Bolt app and the emulator: the answer's text (the notification) and the
    picture's title say the answer is inferred; the observed fields are not all it shows."""
    from slackemu import SlackEmulator, no_slack_env
    from test_abuse_slack import now_offset, run_bot
    from test_slack import answered
    no_slack_env(monkeypatch)
    t = now_offset(1800)
    ev = ssh_session(WEB, t, 400, "jim", 1001, "203.0.113.7", 5, ses=7)
    ev += [WEB.exec(t + 100, 450, ["terraform", "destroy"], uid=1001, auid=1001, ses=7)]   # no fork: inferred
    db = str(tmp_path / "store.db")
    store_with(ev, db).close()
    with SlackEmulator() as emu:
        bot = run_bot(emu, db, allowed_channels=["C1"])
        try:
            emu.slash(emu.url, "terraform")
            top, thread = answered(emu)
            assert top.text.startswith("jim ran terraform destroy") and "(confidence inferred)" in top.text
            assert "*Confidence*\\ninferred :warning:" in json.dumps(top.blocks)
            (pic,) = [f for m in thread for f in m.files]
            assert pic["title"].startswith("jim (inferred) ran `terraform destroy`"), pic
            # a screen reader gets the alt text, not the badge drawn in the picture
            assert emu.uploads[pic["id"]]["alt_txt"] == "How: jim -&gt; web-1 (confidence: inferred)"
        finally:
            bot.stop()


def test_the_page_says_how_the_answer_was_reached_as_the_text_and_slack_do():
    """The text's "Who:" line and Slack's context say how (why root names no one, which key
    named jim); the trace page - where people go to check an answer - said neither that nor the
    chain's one-line summary."""
    from test_html import Page
    from whodid.tracer.render.html import render_html
    (tr,), _ = matches(root_login())
    page = Page(render_html(tr, NOW))
    assert page.by_id("how")[0] == "p"
    text = render_html(tr, NOW)
    assert "ssh publickey as root: root is not a person and no key was recorded to name who logged in" in text
    assert "(person unknown -&gt; web-1 (root))" in text
    assert "<strong>How:</strong> ssh publickey as jim (jim -&gt; web-1)</p>" in \
        render_html(inferred_trace(), NOW)


def shared_login_then_sudo():
    """ec2-user (shared, no key) logs in and runs `sudo rm`: the command runs as root."""
    ev = ssh_session(WEB, 0, 400, "ec2-user", 1000, "203.0.113.7", 5, ses=7)
    ev += [WEB.fork(100, 450, 401),
           WEB.exec(100.1, 450, ["sudo", "rm", "-rf", "/srv"], uid=1000, euid=0, auid=1000, ses=7),
           WEB._ev("cred", 100.1, pid=450, start=450000, via="exec", old_uid=1000, old_euid=1000, uid=1000, euid=0),
           WEB.fork(100.2, 451, 450), WEB.exec(100.3, 451, ["rm", "-rf", "/srv"], uid=0, auid=1000, ses=7)]
    (tr,) = Tracer(store_with(ev)).find(Query(pattern="rm -rf", limit=1))
    assert (tr.poi.user, tr.attributed.account, tr.attributed.confidence) == ("root", "ec2-user", "unknown")
    return tr


def test_an_unknown_answer_does_not_say_it_runs_as_the_login_account_when_it_ran_as_root():
    """The text said "on web-1, pid 451, as root" and two lines below "(it runs as ec2-user)";
    the picture's badge and Slack's Who field said "runs as ec2-user" too: the account is the
    one logged in to, not what the command ran as."""
    from whodid.bot.slack import blocks
    from whodid.tracer.render.html import render_html
    from whodid.tracer.render.layout import layout
    tr = shared_login_then_sudo()
    out = render_trace(tr, NOW)
    assert "runs as ec2-user" not in out
    assert "Confidence: unknown - the evidence does not name a person (logged in as ec2-user); 1 candidate" in out
    assert layout(tr, NOW).person == "person unknown · logged in as ec2-user"
    assert "runs as ec2-user" not in render_html(tr, NOW)
    _, bl = blocks.summary(tr, View(Ask(pattern="rm", since=T0, until=None, since_text="24h")), 1, NOW,
                           lambda v: "v")
    fields = [f["text"] for b in bl if "fields" in b for f in b["fields"]]
    assert "*Who*\nperson unknown (logged in as `ec2-user`)" in fields and "runs as" not in json.dumps(bl)


def test_a_named_answer_lists_no_candidates_in_the_json_as_in_every_view():
    """The views list candidates only when the person is unknown; the JSON and the alert's file
    listed whatever the attribution held, so a named answer carrying candidates disagreed."""
    from whodid.tracer.stitch import Candidate
    tr = observed_trace()
    tr.attributed.candidates = [Candidate("bob", "bob", "web-1", T0, None, None, ["open then"])]
    assert "Candidates" not in render_trace(tr, NOW)
    assert traces_json(Query(pattern="terraform"), [tr], NOW)["matches"][0]["candidates"] == []
    suspect = alerts.Suspect(tr, View(Ask(pattern="t", since=T0, until=None, since_text="24h")), 60.0, "why")
    assert alerts.suspect_json(suspect)["candidates"] == []


def test_the_legend_does_not_call_the_origin_the_persons_login():
    """The page's and the picture's legend called the origin box "the person's login" - on an
    answer whose person is unknown (root's login) or that starts at a service."""
    from whodid.tracer.render.html import render_html
    (tr,), _ = matches(root_login())
    assert "person&#x27;s login" not in render_html(tr, NOW) and "person's login" not in render_html(tr, NOW)
    assert "where the chain starts" in render_html(tr, NOW)


def test_a_shared_sessions_client_that_names_no_one_is_person_unknown_in_every_view():
    """Issue 19: a tmux server's client whose own chain stops at root (or a shared account) is
    shown with the shared session in every view - JSON, the alert's file, text, picture, page,
    Slack - and is "person unknown" (null in JSON) in all of them, never root as a person."""
    from whodid.bot.slack import blocks
    from whodid.tracer.render.html import render_html
    from whodid.tracer.render.layout import layout
    from whodid.tracer.sharing import ATTACHED, SessionClient, SharedSession
    (root_tr,), _ = matches(root_login())
    tr = observed_trace()
    client = SessionClient(role=ATTACHED, proc=450, host="web-1", pid=450, command="tmux attach", since=T0 + 50,
                           until=None, who=root_tr.attributed, summary=root_tr.summary)
    tr.shared = [SharedSession(kind="tmux", host="web-1", proc=9, pid=9, path="/tmp/tmux-0/default", step=1,
                               starter=tr.attributed, clients=[client])]
    q = Query(pattern="terraform")
    (m,) = traces_json(q, [tr], NOW)["matches"]
    (c,) = m["shared_sessions"][0]["clients"]
    assert c["person"] is None and c["account"] == "root" and c["confidence"] == "unknown"
    suspect = alerts.Suspect(tr, View(Ask(pattern="terraform", since=T0, until=None, since_text="24h")), 60.0, "why")
    assert alerts.suspect_json(suspect)["shared_sessions"][0]["clients"][0]["person"] is None
    assert "attached when it ran: person unknown (account root, from " in render_trace(tr, NOW)
    (box,) = layout(tr, NOW).sessions[0].clients
    assert box.title.startswith("person unknown, attached") and box.meta.startswith("account root ·")
    assert "<td>person unknown (account root)</td>" in render_html(tr, NOW)
    _, bl = blocks.summary(tr, View(Ask(pattern="terraform", since=T0, until=None, since_text="24h")), 1, NOW,
                           lambda v: "v")
    assert "`person unknown (account root, from " in json.dumps(bl)
    for shown in (render_trace(tr, NOW), json.dumps(bl), box.title):
        assert "root (from" not in shown and "root, attached" not in shown
