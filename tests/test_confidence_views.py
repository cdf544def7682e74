"""Issue 17: how sure an answer is, and who it could be, shown the same in every view - the text
(CLI and the thread's chain), the picture's layout, the trace page, Slack's blocks through the
real Bolt app, and canary alerts.

The rule that decides confidence is stitch.attribute's (tests/test_session_fallback.py and the
scenario tests); here the attribution is set by hand on real traces from hand-made fixtures, so
each view is tested for what it shows whatever the rule decides. A chain ending at `root` with
no login is the case: "person unknown", never root as the person, with candidates and their
evidence - including candidates whose recorded names are hostile (terminal escapes, Slack
mentions and mrkdwn, HTML)."""

from __future__ import annotations

import json

import pytest

from kit import T0, Host, ssh_session, store_with
from slackemu import SlackEmulator, no_slack_env
from test_abuse_slack import CONTROLS, MENTIONS, now_offset, run_bot
from test_html import Page
from test_image import NOW
from test_slack import answered, button

from whodid.bot import cli
from whodid.bot.canary import alerts
from whodid.bot.slack import blocks
from whodid.bot.slack.ask import Ask
from whodid.bot.slack.buttons import View
from whodid.bot.canary.checks import Canary, Result, Suspects
from whodid.tracer import Query, Tracer, stitch
from whodid.tracer.render.html import render_html
from whodid.tracer.render.image import figure_size, paint
from whodid.tracer.render.layout import layout
from whodid.tracer.render.text import render_trace
from whodid.tracer.stitch import INFERRED, PERSON_UNKNOWN, UNKNOWN, Attribution, Candidate

WEB = Host("web-1", "10.0.0.3")

JIM = Candidate(person="jim", account="ec2-user", host="web-1", login_time=T0 + 50, source="203.0.113.7",
                key_fp="SHA256:jimkey", evidence=["same audit session 7", "loginuid 1000 is ec2-user, held by jim"])
BOB = Candidate(person="bob", account="bob", host="web-1", login_time=T0 + 60, source="198.51.100.4",
                key_fp=None, evidence=["logged in when it began (no session evidence)"])
# what an attacker controls: an account name and evidence built from recorded data
EVIL = Candidate(person="<img src=x onerror=alert(1)>", account="<!channel>`*ops*`\x1b[2J",
                 host='web<1>&"x', login_time=T0 + 70, source="10.0.0.9\rspoof", key_fp="\u202eyek",
                 evidence=["loginuid 1003 is <script>alert(1)</script>", "ses <@U123> \x1b]0;owned\x07 $x^2$",
                           "line\nforged: root is jim"])


def cron_job(t: float = 100) -> list[dict]:
    """A root service (cron) starts `rm -rf /srv/data` with no login on the chain."""
    return [WEB.exec(0, 50, ["/usr/sbin/cron", "-f"], snapshot=True),
            WEB.fork(t, 60, 50), WEB.exec(t + 0.1, 60, ["rm", "-rf", "/srv/data"])]


def unknown(chain: list, cands: list[Candidate]) -> Attribution:
    origin = chain[0]
    return Attribution(user=PERSON_UNKNOWN, host=origin.host, source=None, login_time=None,
                       how=f"no login: the chain starts at the service `{origin.command}` (pid {origin.pid}) "
                           f"on {origin.host}, as {origin.user}",
                       account=origin.user, confidence=UNKNOWN, candidates=list(cands))


def with_who(tr, who: Attribution):
    tr.attributed = who
    tr.summary = stitch.summary(tr.chain, who)
    return tr


def trace(events, pattern):
    (tr,) = Tracer(store_with(events)).find(Query(pattern=pattern, limit=1))
    return tr


def unknown_trace(cands=(JIM, BOB)):
    tr = trace(cron_job(), "rm")
    return with_who(tr, unknown(tr.chain, list(cands)))


def inferred_trace():
    """A missing parent joined to its login by audit session: an inferred link, a named person."""
    ev = ssh_session(WEB, 0, 400, "jim", 1001, "203.0.113.7", 5, ses=7)
    ev += [WEB.exec(100, 450, ["terraform", "destroy"], uid=1001, auid=1001, ses=7)]
    tr = trace(ev, "terraform")
    assert any(s.inferred for s in tr.chain), "the fixture must have an inferred link"
    tr.attributed.confidence = INFERRED
    return tr


def observed_trace():
    ev = ssh_session(WEB, 0, 400, "jim", 1001, "203.0.113.7", 5, ses=7)
    ev += [WEB.fork(100, 450, 401), WEB.exec(100.1, 450, ["terraform", "destroy"], uid=1001, auid=1001, ses=7)]
    return trace(ev, "terraform")


def inferred_note(tr) -> str:
    note = next(s.note for s in tr.chain if s.inferred)
    return note.removeprefix("inferred: ")


# --- text -------------------------------------------------------------------------------

def test_text_says_person_unknown_the_confidence_and_each_candidate_with_its_evidence():
    tr = unknown_trace()
    out = render_trace(tr, NOW)
    assert "Who:  person unknown - no login" in out and "Who:  root" not in out
    assert "Confidence: unknown - the evidence does not name a person (it runs as root); 2 candidates" in out
    assert "How:  person unknown -> web-1" in out
    block = out.split("Candidates (", 1)[1]
    assert ("  1. jim (ec2-user@web-1), logged in 2023-11-14 22:14:10 UTC, from 203.0.113.7, key SHA256:jimkey"
            in block)
    assert "     - same audit session 7\n     - loginuid 1000 is ec2-user, held by jim\n  2. bob@web-1," in block
    assert "     - logged in when it began (no session evidence)" in block


def test_text_says_what_was_inferred_and_that_an_observed_answer_was_seen():
    tr = inferred_trace()
    out = render_trace(tr, NOW)
    assert "Who:  jim - " in out
    assert f"Confidence: inferred - a person is named, but inferred from: {inferred_note(tr)}" in out
    assert "Candidates" not in out
    out = render_trace(observed_trace(), NOW)
    assert "Confidence: observed - every link from the login to the command was recorded" in out


def test_text_of_an_unknown_person_with_no_candidates_says_so():
    out = render_trace(unknown_trace(cands=()), NOW)
    assert "Confidence: unknown - the evidence does not name a person (it runs as root), and points at no login" in out
    assert "Candidates" not in out


def test_hostile_candidates_are_printed_escaped():
    out = render_trace(unknown_trace(cands=(EVIL,)), NOW)
    for bad in ("\x1b", "\r", "\u202e", "\x07"):
        assert bad not in out, repr(bad)
    assert "<!channel>`*ops*`\\x1b[2J@web<1>&\"x" in out and "key \\u202eyek" in out
    assert "     - line\\nforged: root is jim" in out          # a newline cannot forge a line
    assert "\nforged" not in out


# --- picture ----------------------------------------------------------------------------

def test_picture_badges_person_unknown_never_the_account_and_lists_the_candidates():
    tr = unknown_trace()
    lay = layout(tr, NOW)
    assert lay.person == "person unknown · runs as root"
    assert lay.headline.startswith("person unknown") and "root" not in lay.headline
    assert lay.confidence == "unknown" and lay.confidence_label == "confidence: unknown"
    assert lay.candidates == ["jim (ec2-user@web-1) · 22:14:10 · same audit session 7 (+1)",
                              "bob@web-1 · 22:14:20 · logged in when it began (no session evidence)"]
    # the candidates take room in the picture: its height grows by their lines
    bare = layout(with_who(trace(cron_job(), "rm"), unknown(tr.chain, [])), NOW)
    assert bare.candidates == [] and figure_size(lay)[1] > figure_size(bare)[1]


def test_picture_shows_inferred_and_observed_apart():
    lay = layout(inferred_trace(), NOW)
    assert lay.confidence == "inferred" and lay.confidence_label == "confidence: inferred"
    assert lay.person == "person: jim" and lay.candidates == []
    lay = layout(observed_trace(), NOW)
    assert lay.confidence == "observed" and lay.person == "person: jim"


def test_picture_candidates_are_capped_and_say_how_many_more():
    many = [Candidate(f"p{i}", f"u{i}", "web-1", T0 + i, None, None, [f"reason {i}"]) for i in range(9)]
    lay = layout(unknown_trace(cands=many), NOW)
    assert len(lay.candidates) == 6 and lay.candidates[-1].startswith("+4 more candidates")


def test_picture_draws_the_confidence(monkeypatch):
    """Painting reads the layout's confidence: the same trace as unknown and as observed paints
    different pictures, and a hostile candidate (mathtext, escapes) is drawn without raising."""
    tr = observed_trace()
    seen = paint(layout(tr, NOW))
    lay = layout(tr, NOW)
    lay.confidence, lay.confidence_label = "unknown", "confidence: unknown"
    assert paint(lay) != seen
    assert paint(layout(unknown_trace(cands=(EVIL,)), NOW))[:4] == b"\x89PNG"


# --- trace page -------------------------------------------------------------------------

def test_page_has_the_confidence_badge_and_the_candidates_with_their_evidence():
    tr = unknown_trace()
    tr.notes = ["web-1 lost 3 records"]
    text = render_html(tr, NOW)
    page = Page(text)
    assert page.by_id("person")[1]["class"] == "unknown" and page.by_id("headline")[1]["class"] == "unknown"
    assert page.by_id("confidence")[1]["class"] == "confidence unknown"
    assert '<p id="person" class="unknown">person unknown · runs as root</p>' in text
    assert "<strong>Confidence: unknown</strong> - the evidence does not name a person" in text
    assert len(page.all("li", "candidate")) == 2
    assert ("jim (ec2-user@web-1), logged in 2023-11-14 22:14:10 UTC, from 203.0.113.7, key SHA256:jimkey"
            "</span><ul class=\"evidence\"><li>same audit session 7</li>") in text
    assert page.by_id("notes")[0] == "ul" and "<li>web-1 lost 3 records</li>" in text
    (badge,) = [a for t, a in page.tags if a.get("id") == "person-badge"]
    assert badge["data-confidence"] == "unknown"
    assert 'id="candidates"' not in render_html(observed_trace(), NOW)
    inferred = Page(render_html(inferred_trace(), NOW))
    assert inferred.by_id("person")[1]["class"] == "inferred"


def test_page_escapes_hostile_candidates():
    text = render_html(unknown_trace(cands=(EVIL,)), NOW)
    assert "<img" not in text and "<script>alert" not in text and "<!channel>" not in text
    for bad in ("\x1b", "\r", "\u202e", "\x07"):
        assert bad not in text, repr(bad)
    page = Page(text)
    assert [a.get("type") for t, a in page.tags if t == "script"] == ["application/json", None]
    assert all(not k.startswith("on") for _, a in page.tags for k in a)
    assert "loginuid 1003 is &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt; (&lt;!channel&gt;`*ops*`\\x1b[2J@web&lt;1&gt;&amp;&quot;x)" in text


# --- Slack blocks -----------------------------------------------------------------------

ASK = Ask(pattern="rm", since=T0, until=None, since_text="24h")


def value(view: View) -> str:
    return "v"


def labels(bl) -> list[str]:
    return [e["text"]["text"] for b in bl if b["type"] == "actions" for e in b["elements"]]


def test_slack_answer_names_no_account_as_the_person_and_lists_the_candidates():
    tr = unknown_trace()
    assert blocks.headline(tr, NOW).startswith("person unknown ran `rm -rf /srv/data` on web-1")
    text, bl = blocks.summary(tr, View(ASK), 1, NOW, value)
    shown = json.dumps(bl)
    assert text.startswith("person unknown ran rm -rf /srv/data on web-1") and "candidates" in text
    assert "*person unknown* ran `rm -rf /srv/data`" in shown and "*root* ran" not in shown
    fields = [f["text"] for b in bl if "fields" in b for f in b["fields"]]
    assert "*Who*\nperson unknown (runs as `root`)" in fields
    assert any(f.startswith("*Confidence*\nunknown :warning:\nthe evidence does not name a person") for f in fields)
    (cands,) = [b["text"]["text"] for b in bl if b.get("text") and "*Candidates*" in b["text"]["text"]]
    assert ("1. `jim (ec2-user@web-1), logged in 2023-11-14 22:14:10 UTC, from 203.0.113.7, key SHA256:jimkey`"
            "\n        • `same audit session 7`") in cands
    assert "Earlier activity" not in labels(bl)
    _, thread = blocks.chain(tr, View(ASK), 1, NOW, value)
    assert "Earlier activity" not in labels(thread) and "Candidates (" in json.dumps(thread)
    said, earlier = blocks.earlier(tr, [], NOW)
    assert said.startswith("No earlier activity to show: the person behind it is unknown")
    assert "look at its 2 candidates" in json.dumps(earlier)


def test_slack_answer_of_a_known_person_says_how_sure_and_keeps_earlier_activity():
    for tr, level in ((observed_trace(), "observed"), (inferred_trace(), "inferred")):
        _, bl = blocks.summary(tr, View(ASK), 1, NOW, value)
        fields = [f["text"] for b in bl if "fields" in b for f in b["fields"]]
        assert any(f.startswith(f"*Confidence*\n{level}") for f in fields), fields
        assert "*jim* ran" in json.dumps(bl) and "Earlier activity" in labels(bl)
        assert "*Candidates*" not in json.dumps(bl)
    _, bl = blocks.summary(inferred_trace(), View(ASK), 1, NOW, value)
    assert ":warning:" in json.dumps(bl) and "inferred from:" in json.dumps(bl)


def test_slack_candidates_are_escaped_and_cannot_speak_for_the_bot():
    tr = unknown_trace(cands=(EVIL,))
    text, bl = blocks.summary(tr, View(ASK), 1, NOW, value)
    shown = json.dumps(bl, ensure_ascii=False)
    for bad in MENTIONS + CONTROLS + ("<script>", "<img"):
        assert bad not in shown, bad
    assert "`*ops*`" not in shown and "'*ops*'" in shown             # a backtick cannot close the code span
    assert "\\\\x1b[2J" in shown and "line\\\\nforged" in shown


def test_slack_answer_with_many_long_candidates_fits_slacks_limits():
    many = [Candidate(f"p{i}", f"u{i}" * 40, "web-1", T0 + i, None, None, ["e" * 900, "f" * 900])
            for i in range(80)]
    tr = unknown_trace(cands=many)
    _, bl = blocks.summary(tr, View(ASK), 1, NOW, value)
    assert len(bl) <= blocks.MAX_BLOCKS
    for b in bl:
        if b.get("text"):
            assert len(b["text"]["text"]) <= blocks.MAX_SECTION
        for f in b.get("fields") or []:
            assert len(f["text"]) <= 2000
    assert len([b for b in bl if b["type"] == "section" and "fields" in b][0]["fields"]) <= 10
    (cands,) = [b["text"]["text"] for b in bl if b.get("text") and "*Candidates*" in b["text"]["text"]]
    assert "5. `p4 (" in cands and "and 75 more in the chain in the thread" in cands     # all five, then how many
    _, thread = blocks.chain(tr, View(ASK), 1, NOW, value)
    assert len(thread) <= blocks.MAX_BLOCKS
    assert all(len(b["text"]["text"]) <= blocks.MAX_SECTION for b in thread if b.get("text"))


# --- Slack, end to end: the Bolt app over signed HTTP to the emulator -----------------------

@pytest.fixture
def no_login_is_unknown(monkeypatch):
    """Attribution as issue 17's rule 3 gives it for a chain with no login: person unknown, with
    candidates (a hostile one among them). Chains with a login keep what the rule says."""
    real = stitch.attribute

    def attribute(chain, *args, **kwargs):
        who = real(chain, *args, **kwargs)
        return who if chain[0].login else unknown(chain, [JIM, EVIL])
    monkeypatch.setattr(stitch, "attribute", attribute)


@pytest.fixture
def cron_db(tmp_path):
    path = str(tmp_path / "store.db")
    t = now_offset(1800)
    store_with([WEB.exec(t - 100, 50, ["/usr/sbin/cron", "-f"], snapshot=True),
                WEB.fork(t, 60, 50), WEB.exec(t + 0.1, 60, ["rm", "-rf", "/srv/data"])], path).close()
    return path


@pytest.fixture
def emu(monkeypatch):
    no_slack_env(monkeypatch)
    with SlackEmulator() as e:
        yield e


def test_slack_end_to_end_an_unknown_person_is_said_with_candidates_and_no_earlier_activity(
        emu, cron_db, no_login_is_unknown):
    bot = run_bot(emu, cron_db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "rm")
        top, thread = answered(emu)
        shown = json.dumps(top.blocks, ensure_ascii=False)
        assert top.text.startswith("person unknown ran rm -rf /srv/data on web-1")
        assert "*person unknown* ran `rm -rf /srv/data` on *web-1*" in shown and "*root* ran" not in shown
        assert "*Confidence*\\nunknown" in shown and "*Candidates* (2)" in shown
        assert "`jim (ec2-user@web-1)" in shown and "`same audit session 7`" in shown
        assert "Earlier activity" not in [e["text"]["text"] for b in top.blocks if b["type"] == "actions"
                                          for e in b["elements"]]
        for m in [top, *thread]:               # the hostile candidate, escaped in text and blocks
            for said in (m.text, json.dumps(m.blocks, ensure_ascii=False)):
                for bad in MENTIONS + CONTROLS + ("<script>", "<img"):
                    assert bad not in said, (bad, said)
        chain = next(m for m in thread if m.blocks)
        assert "Who:  person unknown" in str(chain.blocks) and "Confidence: unknown" in str(chain.blocks)
        # a click on "earlier" (a button from before, or made by hand) says why there is none
        n = len(emu.thread("C1", top.ts))
        emu.click(emu.url, top, "whodid.earlier", button(top, "started"))
        said = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts)[n:] if m.blocks), None),
                        what="the earlier answer")
        assert said.text.startswith("No earlier activity to show: the person behind it is unknown")
        assert "Earlier activity of" not in said.text
    finally:
        bot.stop()


def test_cli_earlier_says_why_there_is_none_when_the_person_is_unknown(cron_db, capsys, no_login_is_unknown):
    assert cli.main(["trace", "rm", "--db", cron_db, "--since", "24h", "--earlier"]) == 0
    out = capsys.readouterr().out
    assert "Who:  person unknown" in out and "Candidates (" in out
    assert "Earlier activity of person unknown" not in out
    assert "Match 1: No earlier activity to show: the person behind it is unknown" in out
    assert "\x1b" not in out


# --- canary alerts ----------------------------------------------------------------------

def test_an_alert_names_the_candidates_and_its_json_has_no_person(tmp_path):
    tr = unknown_trace(cands=(JIM, EVIL))
    canary = Canary(name="web", check={"type": "http"}, every=60, suspects=Suspects(commands=("rm",)))
    suspect = alerts.Suspect(tr, View(ASK, 0, 0, tr.target), 60.0, "matches `rm`, 1m before the first failure")
    state = alerts.State(name="web", status="failing", since=NOW, failures=3)
    text = alerts.alert_text(canary, state, Result(False, "502"), [suspect], [], NOW)
    assert "1. person unknown ran `rm -rf /srv/data` on web-1" in text
    assert "person unknown; candidates: jim (ec2-user@web-1) (same audit session 7, loginuid 1000" in text
    assert "\x1b" not in text
    _, bl = alerts.alert_blocks(canary, state, Result(False, "502"), [suspect], [], NOW, value)
    shown = json.dumps(bl, ensure_ascii=False)
    assert "candidates: jim (ec2-user@web-1)" in shown and "Earlier activity" not in shown
    for bad in MENTIONS + CONTROLS:
        assert bad not in shown, bad
    data = alerts.suspect_json(suspect)
    assert data["person"] is None and data["confidence"] == "unknown" and data["account"] == "root"
    assert [c["person"] for c in data["candidates"]] == ["jim", EVIL.person]
    assert data["candidates"][0]["evidence"] == JIM.evidence


def test_every_view_goes_by_the_confidence_not_by_what_the_user_field_holds():
    """An unknown attribution whose `user` still holds the account (as before issue 17) is shown
    as person unknown all the same: the views read the confidence, never guess from the name."""
    tr = unknown_trace()
    tr.attributed.user = "root"
    assert "Who:  person unknown" in render_trace(tr, NOW)
    lay = layout(tr, NOW)
    assert lay.person.startswith("person unknown") and lay.headline.startswith("person unknown")
    assert '<p id="person" class="unknown">person unknown' in render_html(tr, NOW)
    assert blocks.headline(tr, NOW).startswith("person unknown ran")
    text, bl = blocks.summary(tr, View(ASK), 1, NOW, value)
    assert text.startswith("person unknown ran") and "*root* ran" not in json.dumps(bl)
    suspect = alerts.Suspect(tr, View(ASK), 60.0, "why")
    assert alerts.suspect_json(suspect)["person"] is None
