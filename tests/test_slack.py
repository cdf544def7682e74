"""The Slack bot, driven for real: the Bolt app, over HTTP, answering signed slash commands
and button clicks from a local Slack emulator (tests/slackemu.py), on the demo fleet's store.
Assertions are on what a person would see: the thread, the picture, the blocks, the buttons."""

import io
import time

import pytest

from slackemu import SlackEmulator, http_slack, no_slack_env

from whodid import config as config_mod
from whodid.bot import cli
from whodid.bot.demo import story as demo
from whodid.bot.slack import blocks
from whodid.bot.slack.buttons import View, encode
from whodid.bot.slack.ask import Ask
from whodid.bot.slack.app import Bot, SlackSetupError, check_tokens
from whodid.tracer import Store

CHAIN = "How:  jim -> jump-box -> config-server (ec2-user), sudo to root"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("slack") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


@pytest.fixture
def slack(demo_db, monkeypatch):
    no_slack_env(monkeypatch)
    with SlackEmulator() as emu:
        emu.usergroups["S1"] = {"handle": "sre", "users": ["U7"]}
        cfg = config_mod.from_dict({
            "identity": {"people": demo.story_people()},
            "slack": http_slack(emu, allowed_channels=["#incidents"], allowed_usergroups=["sre"])})
        bot = Bot(cfg, demo_db, log=lambda m: None)
        bot.start()
        emu.url = bot._server.url
        emu.bot = bot
        yield emu
        bot.stop()


def answered(emu, channel="C1", n=1):
    """The n-th top-level answer in the channel, once its thread has the picture and the chain."""
    def ready():
        tops = emu.top_level(channel)
        if len(tops) < n:
            return None
        top = tops[n - 1]
        thread = emu.thread(channel, top.ts)
        if any(m.files for m in thread) and any(m.blocks and "```" in str(m.blocks) for m in thread):
            return top, thread
        return None
    return emu.wait(ready, what="an answer with its thread")


def button(message, action):
    for b in message.blocks:
        for e in b.get("elements") or []:
            if e.get("action_id") == f"whodid.{action}":
                return e["value"]
        acc = b.get("accessory") or {}
        if acc.get("action_id") == f"whodid.{action}":
            return acc["value"]
    raise AssertionError(f"no {action} button in {message.blocks}")


def logged_question(emu):
    """The newest question in the store's query log; the bot writes it after the answer is out, so wait for it."""
    def newest():
        store = Store.open(emu.bot.store_path)
        try:
            return (store.queries(limit=1) or [None])[0]
        finally:
            store.close()
    return emu.wait(newest, what="the question in the query log")


def png_of(emu, message):
    (f,) = message.files
    return emu.uploads[f["id"]]["data"]


def test_slash_command_answers_in_the_channel_with_the_picture_in_the_thread(slack):
    slack.delays["chat.postMessage"] = 2.0           # a slow answer must not hold up the ack
    status, body, acked = slack.slash(slack.url, "delete-cluster")
    assert status == 200 and "Tracing `delete-cluster` over the last 24h..." in body
    top, thread = answered(slack)
    assert acked < slack.method_calls("chat.postMessage")[0].done
    summary = str(top.blocks)
    assert "*jim* ran `aws eks delete-cluster --name prod` on *config-server*" in summary
    assert "jim -&gt; jump-box -&gt; config-server (ec2-user), sudo to root" in summary
    labels = [e["text"]["text"] for b in top.blocks if b["type"] == "actions" for e in b["elements"]]
    assert labels[:3] == ["Widen scope", "Show what it started", "Earlier activity"]
    png = png_of(slack, next(m for m in thread if m.files))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[0] > 300 and img.shape[1] > 300                  # a real picture, not a stub
    text = next(m for m in thread if m.blocks)
    assert CHAIN in str(text.blocks).replace("&gt;", ">")
    assert slack.uploads[next(m for m in thread if m.files).files[0]["id"]]["alt_txt"].startswith("How: jim")
    q = logged_question(slack)
    assert q["user_name"] == "ana" and q["text"] == "delete-cluster" and q["outcome"].startswith("answered")


def test_a_bad_signature_is_refused_and_nothing_is_posted(slack):
    body = "command=%2Fwhodid&text=delete-cluster&user_id=U1&channel_id=C1"
    status, _, _ = slack.signed_post(slack.url, body, secret="not-the-secret")
    assert status == 401
    status, _, _ = slack.signed_post(slack.url, body, ts=int(time.time()) - 3600)     # a replayed old request
    assert status == 401
    time.sleep(0.5)
    assert slack.messages == [] and not slack.method_calls("chat.postMessage")


def test_unauthorised_people_get_a_polite_refusal_and_are_logged(slack):
    status, body, _ = slack.slash(slack.url, "delete-cluster", user_id="U9", user_name="mallory",
                                  channel_id="C9", channel_name="random")
    assert status == 200 and "Sorry - you may not ask whodid here. Ask in #incidents" in body
    time.sleep(0.5)
    assert slack.messages == []
    q = logged_question(slack)
    assert q["user_name"] == "mallory" and q["outcome"].startswith("refused")


def test_a_user_group_member_may_ask_from_anywhere(slack):
    status, body, _ = slack.slash(slack.url, "delete-cluster", user_id="U7", user_name="sam",
                                  channel_id="C2", channel_name="sre-chat")
    assert "Tracing" in body
    # issue 16: outside the allowed channels the answer is for sam alone (the channel may not see it)
    reply = slack.wait(lambda: [r for r in slack.responses if "blocks" in r and r["blocks"]], what="the answer")
    assert "*jim* ran `aws eks delete-cluster --name prod`" in str(reply[0]["blocks"])
    assert reply[0]["response_type"] == "ephemeral" and slack.top_level("C2") == []


def test_help_and_bad_questions(slack):
    status, body, _ = slack.slash(slack.url, "help")
    assert "/whodid PATTERN [host:GLOB]" in body and "since:" in body
    status, body, _ = slack.slash(slack.url, "delete-cluster since:soon")
    assert "'soon' is neither a duration" in body and "/whodid help" in body


def test_buttons_widen_show_what_it_started_and_earlier_activity(slack):
    slack.slash(slack.url, "delete-cluster")
    top, thread = answered(slack)
    before = len(slack.thread("C1", top.ts))
    assert slack.click(slack.url, top, "whodid.widen", button(top, "widen"))[0] == 200
    slack.wait(lambda: len(slack.thread("C1", top.ts)) >= before + 2, what="the wider trace")
    wider = slack.thread("C1", top.ts)[before:]
    assert any(m.files for m in wider)
    assert "Scope 1:" in str([m.blocks for m in wider])
    n = len(slack.thread("C1", top.ts))
    slack.click(slack.url, top, "whodid.started", button(top, "started"))
    slack.wait(lambda: len(slack.thread("C1", top.ts)) >= n + 2, what="what it started")
    n = len(slack.thread("C1", top.ts))
    slack.click(slack.url, top, "whodid.earlier", button(top, "earlier"))
    slack.wait(lambda: len(slack.thread("C1", top.ts)) >= n + 1, what="earlier activity")
    earlier = slack.thread("C1", top.ts)[-1]
    assert "jim" in earlier.text and "commands in the" in str(earlier.blocks)


def test_other_matches_and_show_one(slack):
    slack.slash(slack.url, "sudo")
    top, _ = answered(slack)
    others = button(top, "others")
    slack.click(slack.url, top, "whodid.others", others)
    listing = slack.wait(lambda: next((m for m in slack.thread("C1", top.ts) if "matches for" in m.text), None),
                         what="the other matches")
    # "sudo" over the demo's days has more than the question's 10 matches: the list says it holds the newest
    said = str(listing.blocks)
    assert "*The newest 10 matches* for `sudo`" in said and "there are older ones" in said
    assert "Not known beyond" not in said
    show = button(listing, "show")
    n = len(slack.thread("C1", top.ts))
    slack.click(slack.url, listing, "whodid.show", show)
    slack.wait(lambda: sum(1 for m in slack.thread("C1", top.ts)[n:] if m.files) >= 1, what="the other match")


def test_a_tampered_button_is_refused(slack):
    slack.slash(slack.url, "delete-cluster")
    top, thread = answered(slack)
    value = button(top, "widen")
    version, raw, sig = value.split(".")
    forged = ".".join([version, raw[:-2] + ("AA" if raw[-2:] != "AA" else "BB"), sig])
    n = len(slack.messages)
    slack.click(slack.url, top, "whodid.widen", forged)
    refusal = slack.wait(lambda: slack.responses and slack.responses[-1], what="the refusal")
    assert "that button cannot be used" in refusal["text"] and refusal["response_type"] == "ephemeral"
    time.sleep(0.3)
    assert len(slack.messages) == n


def test_no_match_offers_a_wider_window_that_works(slack):
    slack.slash(slack.url, "delete-cluster since:3d until:2d")           # before it happened
    top = slack.wait(lambda: slack.top_level("C1") and slack.top_level("C1")[0], what="no match")
    assert "No commands matching `delete-cluster`" in str(top.blocks)
    slack.click(slack.url, top, "whodid.wider", button(top, "wider"))
    slack.wait(lambda: len(slack.top_level("C1")) >= 2, what="the wider search")


def test_a_user_question_that_stopped_looking_says_not_known_not_none(slack, monkeypatch):
    # the newest matches traced; none involves zed; older ones were not looked at - "no commands
    # ... involving zed" would be a confident answer nobody checked
    from whodid.tracer import trace
    monkeypatch.setattr(trace, "USER_SEARCH_MAX", 3)
    slack.slash(slack.url, "sudo user:zed since:4d")
    top = slack.wait(lambda: slack.top_level("C1") and slack.top_level("C1")[0], what="the answer")
    said = str(top.blocks)
    assert "No commands matching `sudo` involving `zed` found." in said
    assert "*Not known beyond the newest 3 matches* over the last 4d" in said
    assert "older ones were not looked at, and may involve `zed`" in said and "ask again with `since:20" in said
    assert " until:20" in said
    assert not any(e.get("action_id") == "whodid.wider" for b in top.blocks for e in b.get("elements") or [])


def test_a_user_question_that_found_some_and_stopped_says_so_with_the_answer(slack, monkeypatch):
    # the newest 3 aws calls are jim's delete and two of bob's: one of jim's found, the rest of
    # the window not looked at - the answer shows jim's and says the search stopped
    from whodid.tracer import trace
    monkeypatch.setattr(trace, "USER_SEARCH_MAX", 3)
    slack.slash(slack.url, "aws user:jim since:4d")
    top, _ = answered(slack)
    said = str(top.blocks)
    assert "*jim* ran `aws eks delete-cluster --name prod`" in said
    assert "*Not known beyond the newest 3 matches*" in said and "may involve `jim`" in said
    assert "Not known beyond the newest 3 matches" in top.text and "\\n" not in top.text   # the notification too


def test_other_matches_of_a_user_question_that_stopped_say_so_too(slack, monkeypatch):
    # jim's delete and his earlier `aws sts` are among the newest 5 aws calls; the rest of the
    # window was not looked at - the list of jim's other matches must not read as all there is
    from whodid.tracer import trace
    monkeypatch.setattr(trace, "USER_SEARCH_MAX", 5)
    slack.slash(slack.url, "aws user:jim since:4d")
    top, _ = answered(slack)
    assert "Not known beyond the newest 5 matches" in top.text
    slack.click(slack.url, top, "whodid.others", button(top, "others"))
    listing = slack.wait(lambda: next((m for m in slack.thread("C1", top.ts) if "matches for" in m.text), None),
                         what="the other matches")
    said = str(listing.blocks)
    assert "*2 matches* for `aws`" in said and "there are older ones" not in said
    assert "*Not known beyond the newest 5 matches*" in said and "may involve `jim`" in said
    assert "Not known beyond the newest 5 matches" in listing.text


def test_other_matches_beyond_a_messages_blocks_are_counted_not_dropped(monkeypatch):
    # Slack takes 50 blocks a message: with slack.matches at 80, 79 others cannot all be listed
    from types import SimpleNamespace
    monkeypatch.setattr(blocks, "headline", lambda tr, now: f"headline {tr.target}")
    from whodid.tracer.trace import Found
    traces = Found(SimpleNamespace(target=("h", i), summary=f"match {i}") for i in range(80))
    traces.more = True
    ask = Ask(pattern="sudo", since=0.0, since_text="1d")
    text, bl = blocks.others(traces, View(ask, 0, 0, ("h", 0)), 100.0, lambda v: "v")
    assert len(bl) == blocks.MAX_BLOCKS and text == "The newest 80 matches for sudo (31 more not listed here)"
    assert "match 0" not in str(bl)                       # the one the answer shows
    assert "_31 more not listed here: narrow the question to see them._" in str(bl[-1])
    assert sum(1 for b in bl if b.get("accessory")) == 48


def test_other_matches_exactly_as_many_as_the_limit_are_all_there_is(slack):
    # "sudo" in the demo's last 24 h has more than 10 matches; over a window that holds exactly
    # slack.matches of them, the list must not send anyone off to look for older ones
    bot = slack.bot
    found = bot.find(View(Ask(pattern="sudo", since=time.time() - 86400, since_text="24h"), 0))
    assert len(found) == 10 and found.more
    exact = Ask(pattern="sudo", since=found[9].poi.start - 0.001, since_text="window")
    listed = bot.find(View(exact, 0))
    assert len(listed) == 10 and not listed.more
    text, bl = blocks.others(listed, View(exact, 0), time.time(), lambda v: "v")
    assert text == "10 matches for sudo" and "older ones" not in str(bl)


def test_other_matches_trace_no_more_matches_than_they_list(slack, monkeypatch):
    # whether older ones exist is one more row of the store, not one more trace: a trace of
    # a busy match is the answer's most expensive part, with ten people asking at once
    from whodid.tracer.trace import Tracer
    built, trace = [], Tracer.trace
    monkeypatch.setattr(Tracer, "trace", lambda self, *a, **k: built.append(1) or trace(self, *a, **k))
    found = slack.bot.find(View(Ask(pattern="sudo", since=time.time() - 86400, since_text="24h"), 0))
    assert len(found) == 10 and found.more and len(built) == 10


def test_rate_limits_are_waited_out(slack):
    slack.fail("chat.postMessage", status=429, retry_after=1)
    slack.slash(slack.url, "delete-cluster")
    answered(slack)
    calls = slack.method_calls("chat.postMessage")
    assert calls[0].status == 429 and calls[1].status == 200
    assert calls[1].at - calls[0].at >= 1.0                         # Retry-After honoured


def test_a_channel_the_bot_is_not_in_gets_an_ephemeral_answer_and_a_hint(slack):
    slack.not_in.add("C1")                 # #incidents (allowed by its ID), without the bot
    slack.slash(slack.url, "delete-cluster", channel_id="C1", channel_name="incidents")
    reply = slack.wait(lambda: slack.responses and slack.responses[-1], what="the ephemeral answer")
    assert "not_in_channel" in reply["text"] and "/invite @whodid" in reply["text"]


def test_button_values_round_trip_and_fit():
    key = b"k" * 32
    view = View(Ask(pattern="x" * 200, host="prod-*", user="jim", since=1.5, until=None, since_text="24h"), 3, 2)
    from whodid.bot.slack.buttons import decode
    assert decode(encode(view, key), key) == view
    assert len(encode(view, key)) < 2000


def test_long_text_is_cut_to_slacks_limits():
    text = "\n".join(f"line {i} " + "x" * 100 for i in range(5000))
    bl = blocks.code_sections(text)
    assert len(bl) <= 48 and all(len(b["text"]["text"]) <= 3000 for b in bl)
    assert "more lines (cut to fit Slack)" in bl[-1]["text"]["text"]
    assert len(blocks.cut("y" * 5000)) <= 3000


def test_missing_tokens_say_which_and_where(monkeypatch):
    no_slack_env(monkeypatch)
    with pytest.raises(SlackSetupError, match=r"set \$SLACK_BOT_TOKEN .* OAuth & Permissions"):
        check_tokens(config_mod.SlackConfig())
    with pytest.raises(SlackSetupError, match=r"SLACK_APP_TOKEN .* App-Level Tokens"):
        check_tokens(config_mod.SlackConfig(bot_token="xoxb-1"))
    with pytest.raises(SlackSetupError, match=r"SLACK_SIGNING_SECRET .* App Credentials"):
        check_tokens(config_mod.SlackConfig(bot_token="xoxb-1", mode="http"))
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-from-env")
    assert check_tokens(config_mod.SlackConfig(bot_token="xoxb-1"))["app_token"] == "xapp-from-env"
