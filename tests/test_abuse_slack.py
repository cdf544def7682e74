"""Issue 16, attacked through the real pipeline: events ingested into a store on disk, traced,
and answered by the Bolt app over signed HTTP to the Slack emulator (tests/slackemu.py), the
trace pages over HTTP, and the CLI.

- A button or link pins the process it was made for: a newer matching command by someone
  else does not change what it shows (item 5).
- Hostile recorded data cannot drive a terminal or mention @channel (item 8); a channel
  renamed to an allowed name is not allowed (item 8).
- The ack comes before any Web API call; a user-group member outside the allowed channels is
  answered privately (item 9).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from kit import T0, Host, ssh_session, store_with
from slackemu import SlackEmulator, http_slack, no_slack_env
from test_slack import answered, button

from whodid import config as config_mod
from whodid.bot import cli
from whodid.bot.slack import app as slack_mod
from whodid.bot.slack.app import Bot
from whodid.bot.slack.ask import Ask
from whodid.bot.web.pages import TracePages
from whodid.tracer import Store, ingest

PROD = Host("prod", "10.0.0.2")


def now_offset(ago: float) -> float:
    """kit's times are T0 + offset: the offset of `ago` seconds before now."""
    return time.time() - T0 - ago


def jims_delete() -> list[dict]:
    """jim logs in to prod and deletes the prod cluster, an hour ago."""
    t = now_offset(3600)
    return ssh_session(PROD, t, 300, "jim", 1001, "192.168.1.5", 51000) + [
        PROD.fork(t + 10, 310, 301), PROD.exec(t + 10.1, 310, ["aws", "eks", "delete-cluster", "--name", "prod"],
                                               uid=1001, auid=1001, ses=300)]


def bobs_delete() -> list[dict]:
    """Later, bob logs in and deletes staging: a newer match for `delete-cluster`."""
    t = now_offset(600)
    return ssh_session(PROD, t, 400, "bob", 1002, "192.168.1.9", 52000) + [
        PROD.fork(t + 10, 410, 401), PROD.exec(t + 10.1, 410, ["aws", "eks", "delete-cluster", "--name", "staging"],
                                               uid=1002, auid=1002, ses=400)]


def hostile() -> list[dict]:
    """Recorded data written by an attacker: Slack mentions and links, terminal escapes, a
    carriage return that hides the end of the line, a right-to-left override."""
    h = Host("web-1\x1b]0;owned\x07", "10.0.0.3")
    t = now_offset(1800)
    argv = ["curl", "<!channel>", "<!here>", "<@U123>", "<#C1>", "<https://evil.example|click me>", "&amp;",
            "\x1b[2J\x1b[1;1Hall good", "hidden\rshown", "back\x08\x08", "\x9b31m", "\u202etxt.exe"]
    return ssh_session(h, t, 500, "<!channel>\x1b[31m", 1003, "192.168.1.6", 53000) + [
        h.fork(t + 5, 510, 501), h.exec(t + 5.1, 510, argv, uid=1003, auid=1003, ses=500, cwd="/tmp/\x1b[8m\r",
                                         tty="pts/0\x1b[0m")]


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "store.db")
    store_with(jims_delete() + hostile(), path).close()
    return path


def slack_cfg(emu, **slack):
    return config_mod.from_dict({"slack": http_slack(emu, **slack)})


@pytest.fixture
def emu(monkeypatch):
    no_slack_env(monkeypatch)
    with SlackEmulator() as e:
        e.usergroups["S1"] = {"handle": "sre", "users": ["U7"]}
        yield e


def run_bot(emu, db, pages=None, **slack) -> Bot:
    bot = Bot(slack_cfg(emu, **slack), db, log=lambda m: None)
    bot.pages = pages
    bot.start()
    emu.url = bot._server.url
    return bot


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- item 5: what a link or button shows ---------------------------------------------------------

def test_buttons_and_links_keep_showing_jims_process_after_bob_runs_a_newer_match(emu, db):
    pages = TracePages(config_mod.from_dict({}), db, log=lambda m: None)
    pages.start("127.0.0.1:0")
    bot = run_bot(emu, db, pages, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "delete-cluster")
        top, _ = answered(emu)
        assert "--name prod" in str(top.blocks) and "*jim*" in str(top.blocks)
        widen, earlier, started = button(top, "widen"), button(top, "earlier"), button(top, "started")
        link = next(e["url"] for b in top.blocks for e in b.get("elements") or [] if e.get("action_id") == "whodid.open")

        store = Store.open(db)
        assert ingest(store, bobs_delete()).rejected == 0           # newer, same pattern, someone else
        store.close()
        emu.slash(emu.url, "delete-cluster")                        # a new question sees bob's first...
        newest, _ = answered(emu, n=2)
        assert "--name staging" in str(newest.blocks) and "*bob*" in str(newest.blocks)

        n = len(emu.thread("C1", top.ts))                           # ...but jim's buttons still show jim
        emu.click(emu.url, top, "whodid.widen", widen)
        emu.wait(lambda: any(m.files for m in emu.thread("C1", top.ts)[n:]), what="the wider picture")
        chain = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts)[n:] if "Scope 1" in str(m.blocks)), None),
                         what="the wider chain")
        assert "delete-cluster --name prod" in str(chain.blocks) and "staging" not in str(chain.blocks)
        assert "Who:  jim" in str(chain.blocks)
        n = len(emu.thread("C1", top.ts))
        emu.click(emu.url, top, "whodid.earlier", earlier)
        said = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts)[n:] if "earlier" in m.text), None),
                        what="earlier activity")
        assert "jim" in said.text and "bob" not in said.text
        n = len(emu.thread("C1", top.ts))
        emu.click(emu.url, top, "whodid.started", started)
        chain = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts)[n:] if m.blocks), None),
                         what="what it started")
        assert "delete-cluster --name prod" in str(chain.blocks) and "staging" not in str(chain.blocks)

        for url in (link, link + "&scope=2", link + "&scope=3&expand=group:x"):    # the page, widened too
            status, body = get(url)
            assert status == 200 and "--name prod" in body and "staging" not in body, url
    finally:
        bot.stop()
        pages.stop()


def test_links_and_buttons_from_before_pins_are_refused_with_ask_again(db):
    import base64

    from whodid.bot.slack.ask import Ask
    from whodid.bot.slack.buttons import StateError, _sign as sign_button, decode
    from whodid.bot.web.links import LinkError, _sign as sign_link, check, link_key
    key = b"k" * 32
    ask = Ask(pattern="delete-cluster", since=time.time() - 86400, since_text="24h")
    old = {"p": ask.pattern, "h": None, "u": None, "s": ask.since, "t": None, "w": "24h", "i": 0, "c": 0}
    raw = base64.urlsafe_b64encode(json.dumps(old).encode()).decode().rstrip("=")
    with pytest.raises(StateError, match="did not pin the answer to one process.*ask again"):
        decode(f"1.{raw}.{sign_button(raw, key)}", key)
    old["x"] = time.time() + 3600
    raw = base64.urlsafe_b64encode(json.dumps(old).encode()).decode().rstrip("=")
    with pytest.raises(LinkError, match="did not pin it to one process.*ask again"):
        check(f"1.{raw}.{sign_link(raw, link_key(key))}", link_key(key), time.time())


# --- item 8: output cannot be hijacked ------------------------------------------------------------

CONTROLS = ("\x1b", "\r", "\x08", "\x07", "\x9b", "\u202e")
MENTIONS = ("<!channel>", "<!here>", "<@U123>", "<#C1>", "<https://evil.example|click me>")


def test_hostile_recorded_data_reaches_slack_escaped_in_the_text_and_the_blocks(emu, db):
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "curl")
        top, thread = answered(emu)
        sent = [top, *thread]
        assert "curl" in top.text                                  # the answer is there...
        for m in sent:                                             # ...and nothing in it is a mention
            for what in (m.text, json.dumps(m.blocks, ensure_ascii=False)):
                for bad in MENTIONS + CONTROLS:
                    assert bad not in what, (bad, what)
        assert "&lt;!channel&gt;" in top.text and "&lt;https://evil.example|click me&gt;" in top.text
        assert "&amp;amp;" in top.text                              # & itself, escaped once
        assert "\\x1b[2J" in top.text and "\\u202etxt.exe" in top.text   # shown, not obeyed
    finally:
        bot.stop()


def test_hostile_recorded_data_is_printed_escaped_by_the_cli(db, capsys):
    assert cli.main(["trace", "curl", "--db", db, "--since", "24h", "--earlier"]) == 0
    out = capsys.readouterr().out
    for bad in CONTROLS:
        assert bad not in out, repr(bad)
    assert "\\x1b[2J\\x1b[1;1Hall good" in out and "hidden\\rshown" in out and "back\\x08\\x08" in out
    assert "\\x9b31m" in out and "\\u202etxt.exe" in out and "web-1\\x1b]0;owned\\x07" in out
    assert "<!channel>\\x1b[31m" in out                            # the user name, escaped
    assert cli.main(["db", "stats", "--db", db]) == 0                # host names in the inventory
    out = capsys.readouterr().out
    assert "\x1b" not in out and "web-1\\x1b]0;owned\\x07" in out
    # the JSON is JSON: every control character is escaped by the encoder, and it round-trips
    assert cli.main(["trace", "curl", "--db", db, "--since", "24h", "--json"]) == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw and "\u202e" not in raw
    match = json.loads(raw)["matches"][0]
    assert match["poi"]["cwd"] == "/tmp/\x1b[8m\r" and match["poi"]["tty"] == "pts/0\x1b[0m"


def test_a_channel_renamed_to_an_allowed_name_is_not_allowed(emu, db):
    emu.page_size = 2                                # conversations.list in pages: the bot follows the cursor
    emu.channels.update({"C4": "general", "C8": "incidents-archive"})
    bot = run_bot(emu, db, allowed_channels=["#incidents"])
    try:
        assert bot.channel_ids == {"C1"}
        # #incidents is renamed and someone renames #random (C9) to incidents
        emu.channels.update({"C1": "incidents-old", "C9": "incidents"})
        status, body, _ = emu.slash(emu.url, "delete-cluster", user_id="U9", channel_id="C9", channel_name="incidents")
        assert status == 200 and "Sorry - you may not ask whodid here" in body
        status, body, _ = emu.slash(emu.url, "delete-cluster", channel_id="C1", channel_name="incidents-old")
        assert "Tracing" in body                     # the channel itself, whatever it is called now
    finally:
        bot.stop()


# --- item 9: ack first, private answers --------------------------------------------------------------

def test_the_ack_comes_before_a_slow_user_group_lookup(emu, db, monkeypatch):
    bot = run_bot(emu, db, allowed_channels=["C1"], allowed_usergroups=["sre"])
    try:
        monkeypatch.setattr(slack_mod, "GROUP_CACHE", 0.0)         # what was read at start has expired
        emu.delays["usergroups.users.list"] = 4.0                  # and Slack is slow to say it again
        before = len(emu.method_calls("usergroups.users.list"))
        status, body, acked = emu.slash(emu.url, "delete-cluster", user_id="U7", user_name="sam",
                                        channel_id="C2", channel_name="sre-chat")
        assert status == 200
        lookup = emu.wait(lambda: [c for c in emu.method_calls("usergroups.users.list")[before:] if c.done],
                          what="the user-group lookup")[0]
        assert acked < lookup.done                                 # Slack had its ack before the lookup ended
        said = emu.wait(lambda: [r for r in emu.responses if "Tracing" in (r.get("text") or "")], what="Tracing")
        assert said[0]["response_type"] == "ephemeral"
        # someone in no group, outside the allowed channels: acked first too, then refused privately
        status, body, acked = emu.slash(emu.url, "delete-cluster", user_id="U9", user_name="mallory",
                                        channel_id="C9", channel_name="random")
        refusal = emu.wait(lambda: [r for r in emu.responses if "Sorry" in (r.get("text") or "")], what="refusal")
        assert refusal[0]["response_type"] == "ephemeral" and "Sorry" not in body
    finally:
        bot.stop()


def test_a_group_member_outside_the_allowed_channels_is_answered_privately_buttons_too(emu, db):
    bot = run_bot(emu, db, allowed_channels=["C1"], allowed_usergroups=["sre"])
    try:
        emu.slash(emu.url, "delete-cluster", user_id="U7", user_name="sam", channel_id="C2", channel_name="sre-chat")
        answers = emu.wait(lambda: [r for r in emu.responses if r.get("blocks")] if len(
            [r for r in emu.responses if r.get("blocks")]) >= 2 else None, what="the summary and the chain")
        assert all(r["response_type"] == "ephemeral" for r in answers)
        assert "*jim*" in str(answers[0]["blocks"]) and "Who:  jim" in str(answers[1]["blocks"])
        time.sleep(0.3)
        assert emu.messages == [] and not emu.method_calls("files.getUploadURLExternal")   # nothing public
        # a button on that private answer, clicked there: private too
        from slackemu import Message
        msg = Message("C2", "1.1", "", answers[0]["blocks"], None)
        n = len(emu.responses)
        emu.click(emu.url, msg, "whodid.earlier", button(msg, "earlier"), user_id="U7", user_name="sam",
                  channel_name="sre-chat")
        more = emu.wait(lambda: emu.responses[n:], what="earlier activity")
        assert more[0]["response_type"] == "ephemeral" and emu.messages == []
        # the same person in an allowed channel: in the channel, for everyone there
        emu.slash(emu.url, "delete-cluster", user_id="U7", user_name="sam")
        answered(emu)
    finally:
        bot.stop()


# --- found by an adversarial review of items 5, 8, 9 and 10 -------------------------------------------

def test_the_trace_picture_upload_carries_recorded_data_escaped(emu, db):
    """The picture's file name, title and alt text are made of recorded data too (host, user,
    command): Slack shows them beside the picture, so they cannot carry a terminal escape, a
    right-to-left override or a mention, and the file name no path separators."""
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "curl")
        answered(emu)
        (up,) = [u for u in emu.uploads.values() if u.get("title")]
        for what in (up["title"], up["alt_txt"], up["filename"]):
            for bad in MENTIONS + CONTROLS:
                assert bad not in what, (bad, what)
        assert "/" not in up["filename"] and up["filename"].endswith(".png")
        assert "curl" in up["title"] and "\\x1b[2J" in up["title"]           # shown, not obeyed
    finally:
        bot.stop()


def test_the_trace_page_log_line_cannot_be_driven_by_a_request_path(db):
    """Anyone who can reach the page server picks the path it logs: before any link is
    checked. An escape sequence in it must not reach the operator's terminal as one."""
    import socket
    said: list[str] = []
    pages = TracePages(config_mod.from_dict({}), db, log=said.append)
    pages.start("127.0.0.1:0")
    try:
        host, port = pages._server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET /\x1b]0;owned\x07\x1b[2J\x9b1A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
    finally:
        pages.stop()
    (line,) = [m for m in said if "GET" in m]
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line, line
    assert "\\x1b]0;owned" in line and "-> 404" in line


def test_canary_run_prints_what_a_remote_api_says_escaped(db, tmp_path, capsys):
    """`whodid canary run` prints the check's summary, which quotes the remote API (a Kubernetes
    object's kind, name and deletion time): escaped like every other remote's words."""
    from whodid.bot.demo.fakekube import FakeKube
    path = "/apis/eks.amazonaws.com/v1/clusters/prod"
    with FakeKube() as kube:
        kube.objects[path] = {"kind": "Cluster\x1b[2J", "metadata": {
            "name": "prod\u202e", "deletionTimestamp": "now\x1b]0;owned\x07\rall good"}}
        (tmp_path / "cfg.yaml").write_text(json.dumps({"canaries": [
            {"name": "prod-cluster", "every": "1m",
             "check": {"type": "kubernetes", "api_url": kube.url, "path": path, "token": kube.token}}]}))
        os.chmod(tmp_path / "cfg.yaml", 0o600)       # a canary token inside: private, or refused
        assert cli.main(["--config", str(tmp_path / "cfg.yaml"), "canary", "run", "prod-cluster", "--db", db]) == 1
    out = capsys.readouterr().out
    for bad in CONTROLS:
        assert bad not in out, (bad, out)
    assert "Cluster\\x1b[2J prod\\u202e is being deleted" in out


def two_useradds(argv0: str) -> list[dict]:
    """jim and then bob, each in his own ssh session on prod, run the same `useradd eve` as root,
    within half a second of each other."""
    t = now_offset(1200)
    return (ssh_session(PROD, t, 300, "jim", 1001, "192.168.1.5", 51000)
            + ssh_session(PROD, t, 400, "bob", 1002, "192.168.1.9", 52000)
            + [PROD.fork(t + 10, 310, 301), PROD.exec(t + 10.1, 310, [argv0, "eve"], uid=0, auid=1001, ses=300),
               PROD.fork(t + 10.2, 410, 401), PROD.exec(t + 10.5, 410, [argv0, "eve"], uid=0, auid=1002, ses=400)])


def trace_buttons_by_person(message) -> dict[str, str]:
    """The change review's Trace buttons, by the person whose rows they are under."""
    out, person = {}, None
    for b in message.blocks:
        if b.get("type") == "context":
            text = b["elements"][0]["text"]
            if text.startswith("*"):
                person = text[1:].split("*", 1)[0]
        acc = b.get("accessory") or {}
        if acc.get("action_id") == "whodid.show" and person:
            out.setdefault(person, acc["value"])
    return out


@pytest.mark.parametrize("argv0", ["useradd", "/usr/sbin/useradd"])
def test_a_change_reviews_trace_button_shows_the_change_it_was_made_for(emu, tmp_path, argv0):
    """A Trace button under a change review row is a signed button too (item 5): it shows the
    process of that row, not the newest command like it within a second (bob's, under jim's
    row) - and a command run by its full path is a command, not a file to look for."""
    db = str(tmp_path / "store.db")
    store_with(two_useradds(argv0), db).close()
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "changes since:24h")
        review = emu.wait(lambda: next((m for m in emu.top_level("C1") if "Changes" in m.text), None),
                          what="the change review")
        buttons = trace_buttons_by_person(review)
        assert set(buttons) == {"jim", "bob"}, review.blocks
        for person, other in (("jim", "bob"), ("bob", "jim")):
            n = len(emu.thread("C1", review.ts))
            emu.click(emu.url, review, "whodid.show", buttons[person])
            said = emu.wait(lambda: next((m for m in emu.thread("C1", review.ts)[n:] if m.blocks), None),
                            what=f"the trace of {person}'s change")
            assert f"*{person}*" in str(said.blocks) and f"*{other}*" not in str(said.blocks), said.blocks
    finally:
        bot.stop()


def test_a_channel_name_that_cannot_be_resolved_for_a_network_fault_is_refused_and_said(emu, db):
    """Item 8: channel names are resolved once, at start. When Slack cannot be reached for that
    (the connection drops, past the client's own retry), `serve` must not die with a traceback:
    the names allow nothing, in one line of the log, and channels given by ID still work."""
    said: list[str] = []
    emu.fail("conversations.list", status=0, times=5)
    bot = Bot(slack_cfg(emu, allowed_channels=["#incidents", "C2"]), db, log=said.append)
    try:
        bot.start()
        emu.url = bot._server.url
        assert bot.channel_ids == {"C2"}
        assert any("#incidents" in m or "incidents" in m for m in said if "refused" in m), said
        status, body, _ = emu.slash(emu.url, "delete-cluster", channel_id="C1", channel_name="incidents")
        assert "Sorry - you may not ask whodid here" in body
        status, body, _ = emu.slash(emu.url, "delete-cluster", channel_id="C2", channel_name="sre-chat")
        assert "Tracing" in body
    finally:
        bot.stop()


def test_the_first_question_after_start_is_acked_without_asking_slack_who_the_bot_is(emu, db):
    """Item 9: no Web API call before the ack. Bolt's authorization middleware calls auth.test
    on the first request when the app was built without the token's auth.test result - inside
    the request, before the listener and its ack - so the first question after every restart
    waited on Slack (and failed with it). The bot knows who it is from its start."""
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        asked = len(emu.method_calls("auth.test"))
        emu.delays["auth.test"] = 4.0                               # Slack slow to say who we are
        status, body, acked = emu.slash(emu.url, "delete-cluster")
        assert status == 200 and "Tracing" in body
        answered(emu)
        emu.slash(emu.url, "delete-cluster")
        answered(emu, n=2)
        assert emu.method_calls("auth.test")[asked:] == []          # never on a question
    finally:
        bot.stop()


def test_a_pin_for_another_boot_or_out_of_range_shows_a_clear_message_never_another_process(emu, db):
    """A signed button whose pin names no stored process - jim's pid and start, but on another
    boot of prod (after a reboot the pid is someone else's) - says the match is gone; it never
    shows the process that now has that pid. Numbers out of range are refused as invalid."""
    from whodid.bot.slack.buttons import View
    from whodid.tracer.trace import Target
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "delete-cluster")
        top, _ = answered(emu)
        pin = bot.find(View(bot_ask(top, bot)))[0].target
        assert pin.host == "prod" and pin.boot == "boot-1"
        for other in (Target(pin.host, "boot-2", pin.pid, pin.start, pin.at), Target("prod2", pin.boot, pin.pid,
                                                                                    pin.start, pin.at),
                      Target(pin.host, pin.boot, pin.pid, pin.start + 1, pin.at)):
            n = len(emu.thread("C1", top.ts))
            emu.click(emu.url, top, "whodid.widen", bot.value(View(bot_ask(top, bot), 0, 1, other)))
            said = emu.wait(lambda: emu.thread("C1", top.ts)[n:], what="the answer to a pin that matches nothing")
            assert "no longer in the store" in said[0].text and "jim" not in str(said), said
        n = len(emu.responses)
        emu.click(emu.url, top, "whodid.widen", bot.value(View(bot_ask(top, bot), 0, 1,
                                                               Target("prod", "boot-1", -1, pin.start, pin.at))))
        refused = emu.wait(lambda: emu.responses[n:], what="the refusal")
        assert "cannot be used" in refused[0]["text"] and refused[0]["response_type"] == "ephemeral"
    finally:
        bot.stop()


def bot_ask(top, bot):
    """The question a message's buttons carry."""
    from whodid.bot.slack.buttons import decode
    return decode(button(top, "earlier"), bot.key).ask


FORGED = "ok\n09:00:00  prod             root       rm -rf /var/lib/mysql"


def jims_forged_line() -> list[dict]:
    """Before deleting the cluster, jim echoes a newline and a made-up line: a list of commands
    that keeps newlines in recorded data shows root running rm -rf."""
    t = now_offset(3600)
    return jims_delete() + [PROD.fork(t + 5, 305, 301),
                            PROD.exec(t + 5.1, 305, ["echo", FORGED], uid=1001, auid=1001, ses=300)]


def test_a_newline_in_recorded_data_cannot_forge_a_line_in_slack(emu, tmp_path):
    """Item 8: a newline in an argument is data, not a line break. In the blocks it was kept
    (escape kept newlines for the code blocks' sake), so `Earlier activity` listed a made-up
    line - root running rm -rf - and a headline or a summary's code span broke in two."""
    db = str(tmp_path / "store.db")
    store_with(jims_forged_line(), db).close()
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "delete-cluster")
        top, _ = answered(emu)
        n = len(emu.thread("C1", top.ts))
        emu.click(emu.url, top, "whodid.earlier", button(top, "earlier"))
        said = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts)[n:] if "earlier" in m.text), None),
                        what="earlier activity")
        listed = json.dumps(said.blocks)
        assert "echo ok\\\\n09:00:00" in listed, listed              # one line, its newline shown
        assert "\\n09:00:00  prod" not in listed.replace("\\\\n", "")
        emu.slash(emu.url, "echo")
        echo, thread = answered(emu, n=2)
        for m in (echo, *thread):
            for b in m.blocks or []:
                for text in [(b.get("text") or {}).get("text", "")] + [f["text"] for f in b.get("fields") or []]:
                    if "rm -rf" in text and not text.startswith("```"):
                        assert "\n09:00:00" not in text, text
        assert "\n09:00:00" not in echo.text
    finally:
        bot.stop()


def test_the_trace_page_shows_recorded_control_and_bidi_characters_escaped(tmp_path):
    """Item 8 on the trace page: HTML escaping stops markup, not a right-to-left override - in a
    browser `\\u202etxt.exe` reads `exe.txt`, and a command can be made to look like another. The
    page (its boxes, lists and the data its script shows on a click) shows them as escapes."""
    db = str(tmp_path / "store.db")
    store_with(jims_delete() + hostile(), db).close()
    pages = TracePages(config_mod.from_dict({}), db, log=lambda m: None)
    link = pages.link(Ask(pattern="curl", since=time.time() - 86400, since_text="24h"))
    status, body, _ = pages.page(link[link.index("/trace"):])
    assert status == 200 and "curl" in body
    for bad in CONTROLS:
        assert bad not in body, repr(bad)
    assert "\\u202etxt.exe" in body and "\\x1b[2J" in body


def test_a_no_match_answer_escapes_what_was_asked_once(emu, db):
    """Escaping twice shows `&amp;amp;`: the no-match fallback text was built from the already
    escaped host and user, then escaped again where it leaves (Bot.post)."""
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "nothing-like-this host:a&b<c> user:x&y")
        said = emu.wait(lambda: next((m for m in emu.top_level("C1") if m.text.startswith("No ")), None),
                        what="the no-match answer")
        for what in (said.text, json.dumps(said.blocks)):
            assert "&amp;amp;" not in what and "&amp;lt;" not in what, what
        assert "a&amp;b&lt;c&gt;" in said.text and "x&amp;y" in said.text
    finally:
        bot.stop()


def jims_mathtext() -> list[dict]:
    """jim's command has dollar signs: matplotlib reads `$...$` as mathematics."""
    t = now_offset(900)
    return ssh_session(PROD, t, 300, "jim", 1001, "192.168.1.5", 51000) + [
        PROD.fork(t + 10, 310, 301), PROD.exec(t + 10.1, 310, ["terraform", "destroy", r"$\frac{a$", "$\mathrm{ls}$"],
                                               uid=1001, auid=1001, ses=300)]


def test_dollar_signs_in_recorded_data_are_drawn_as_text_not_mathematics(emu, tmp_path):
    """Item 8 in the picture: matplotlib parses `$...$` in any text it draws as mathtext. A
    command with `$\\frac{a$` made the picture raise - the answer's thread never came, and a
    canary alert whose top suspect it was raised after it was posted, so it was queued and
    posted again every 30 s - and `$\\mathrm{ls}$` drew `ls` where the command had more."""
    from whodid.tracer import Query, Tracer
    from whodid.tracer.render.image import render_png
    db = str(tmp_path / "store.db")
    store = store_with(jims_mathtext(), db)
    (tr,) = Tracer(store).find(Query(pattern="terraform"))
    assert render_png(tr, time.time()).startswith(b"\x89PNG")
    store.close()
    bot = run_bot(emu, db, allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "terraform")
        top, thread = answered(emu)
        assert any(m.files for m in thread)
    finally:
        bot.stop()


def hosts_named_with_backticks(tmp_path) -> str:
    """jim, as root on a host named web`*URGENT: run this*`, adds a user named e`*x*`."""
    h = Host("web`*URGENT: run this*`", "10.0.0.7")
    t = now_offset(1200)
    db = str(tmp_path / "store.db")
    store_with(ssh_session(h, t, 300, "jim", 1001, "192.168.1.5", 51000)
               + [h.fork(t + 10, 310, 301), h.exec(t + 10.1, 310, ["useradd", "e`*x*`"], uid=0, auid=1001, ses=300)],
               db).close()
    return db


def test_a_backtick_in_recorded_data_cannot_close_a_code_span_in_slack(emu, tmp_path):
    """mrkdwn injection without < >: a host named web`*URGENT: run this*` closed the code span it
    was shown in (a change review row), and what followed was formatted as the bot's own words
    (bold here); so did a recorded command as the pattern of a Trace button's answer. Values in
    code spans go through blocks.code, which shows a backtick as '."""
    bot = run_bot(emu, hosts_named_with_backticks(tmp_path), allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "changes since:24h")
        review = emu.wait(lambda: next((m for m in emu.top_level("C1") if "Changes" in m.text), None),
                          what="the change review")
        shown = json.dumps(review.blocks)
        assert "web`*URGENT" not in shown and "`web'*URGENT: run this*'`" in shown, shown
        n = len(emu.thread("C1", review.ts))
        emu.click(emu.url, review, "whodid.show", trace_buttons_by_person(review)["jim"])
        said = emu.wait(lambda: next((m for m in emu.thread("C1", review.ts)[n:] if m.blocks), None),
                        what="the trace of the change")
        place = next(b["elements"][0]["text"] for b in said.blocks if b["type"] == "context"
                     and "match 1" in b["elements"][0]["text"])
        assert "`useradd e'*x*'`" in place and "e`*x*`" not in place, place
    finally:
        bot.stop()


@pytest.mark.xfail(strict=True, reason="mrkdwn has no escape for * _ ~ `: a recorded value shown outside a code "
                   "span (the summary's bold host, Who/Where/How) can format the bot's words. Fix: show recorded "
                   "values in code spans (blocks.code) or plain_text elements - a change of the answer's look")
def test_a_recorded_value_outside_a_code_span_cannot_format_the_bots_words(emu, tmp_path):
    bot = run_bot(emu, hosts_named_with_backticks(tmp_path), allowed_channels=["C1"])
    try:
        emu.slash(emu.url, "useradd")
        top, _ = answered(emu)
        assert "web`*URGENT" not in json.dumps(top.blocks)
    finally:
        bot.stop()


def test_stopping_does_not_wait_out_slacks_retry_after(emu, db):
    """A 429 makes the client sleep Retry-After, up to five times, inside an answer (or a canary's
    delivery). bot.stop waits for the answers being worked on, so `whodid serve` did not stop
    until every sleep was over (minutes, for Slack's longer waits). Stopping cuts the wait short:
    the answer gives up on Slack (a canary's message stays queued, persisted), no retry is made."""
    import threading
    bot = run_bot(emu, db, allowed_channels=["C1"])
    emu.fail("chat.postMessage", status=429, retry_after=3, times=6)
    status, body, _ = emu.slash(emu.url, "delete-cluster")
    assert "Tracing" in body
    emu.wait(lambda: emu.method_calls("chat.postMessage"), what="the rate-limited post")
    stopper = threading.Thread(target=bot.stop)
    stopper.start()
    emu.wait(lambda: not stopper.is_alive() or len(emu.method_calls("chat.postMessage")) > 1,
             what="the bot to stop, or the client to retry")
    stopper.join()
    assert len(emu.method_calls("chat.postMessage")) == 1            # stopped before any retry


def test_a_private_change_review_fits_in_what_slack_takes_from_one_response_url(emu, tmp_path):
    """Item 9's private answers go through the command's response_url, which Slack takes five
    times at most. A long change review (six messages) asked privately lost its last page
    without a word; it is told in the pages Slack will take, the rest counted."""
    t = now_offset(3000)
    events = ssh_session(PROD, t, 300, "jim", 1001, "192.168.1.5", 51000)
    for i in range(260):
        events += [PROD.fork(t + 10 + i, 1000 + i, 301),
                   PROD.exec(t + 10.1 + i, 1000 + i, ["useradd", f"user{i}"], uid=0, auid=1001, ses=300)]
    db = str(tmp_path / "store.db")
    store_with(events, db).close()
    bot = run_bot(emu, db, allowed_channels=["C1"], allowed_usergroups=["sre"])
    try:
        emu.slash(emu.url, "changes since:24h", user_id="U7", user_name="sam", channel_id="C2",
                  channel_name="sre-chat")
        last = emu.wait(lambda: next((r for r in emu.responses + emu.refused_responses
                                      if "more unplanned rows not shown" in json.dumps(r.get("blocks"))), None),
                        what="the review's last page")
        assert last in emu.responses and emu.refused_responses == []
        assert all(r["response_type"] == "ephemeral" for r in emu.responses) and emu.messages == []
    finally:
        bot.stop()
