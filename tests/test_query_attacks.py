"""The query language under attack: what users (and hostile users) type that the grammar used
to read as something else without a word - a filter typed but not applied, a pattern changed
on the trace page, a time that crashed the answer - on every surface: the grammar itself
(bot/query.py), the CLI (whodid.bot.cli.main) and Slack (the real Bolt app over HTTP, signed
slash commands from tests/slackemu.py). Each test failed before its fix."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from slackemu import SlackEmulator, http_slack

from whodid import config as config_mod
from whodid.bot import cli
from whodid.bot.query import Question, QueryError, format, parse, parse_text
from whodid.bot.slack import ask as slack_ask

NOW = 1_795_464_000.0                 # 2026-11-23T20:00Z
DEFAULTS = {"since": "24h"}
SURFACES = ("cli", "slack")


# --- lookalike punctuation: a filter typed, never applied -----------------------------------

@pytest.mark.parametrize("words", [
    ["delete-cluster", "since\uff1a3d"],          # fullwidth colon (CJK keyboards)
    ["delete-cluster", "host\ua789config-*"],     # modifier letter colon
    ["delete-cluster", "host\u2236config-*"],     # ratio
    ["delete-cluster", "\u2014since", "3d"],      # em dash: macOS/iOS "smart dashes" turn -- into it
    ["delete-cluster", "\u2013host=config-*"],    # en dash
    ["delete-cluster", "\u2212\u2212user", "jim"],  # two minus signs
])
@pytest.mark.parametrize("surface", SURFACES)
def test_a_key_typed_with_lookalike_punctuation_is_an_error_not_a_pattern_word(words, surface):
    with pytest.raises(QueryError) as err:
        parse(words, "trace", NOW, DEFAULTS, surface=surface)
    said = str(err.value)
    assert "U+" in said and "--" in said, said      # names the character, and the escape


@pytest.mark.parametrize("surface", SURFACES)
def test_lookalike_punctuation_after_dashes_or_not_before_a_key_is_a_pattern(surface):
    assert parse(["--", "since\uff1a3d"], "trace", NOW, DEFAULTS, surface=surface).pattern == "since\uff1a3d"
    assert parse(["echo", "a\u2014b"], "trace", NOW, DEFAULTS, surface=surface).pattern == "echo a\u2014b"


def test_slack_smart_quotes_quote_like_straight_ones():
    """Slack's clients (and phones) turn "..." into curly quotes: the words must still group."""
    curly = parse_text("\u201ckubectl delete\u201d since:3d", "slack-trace", NOW, DEFAULTS)
    straight = parse_text('"kubectl delete" since:3d', "slack-trace", NOW, DEFAULTS)
    assert curly == straight and curly.pattern == "kubectl delete"
    assert parse_text("\u201cnginx:latest\u201d", "slack-trace", NOW, DEFAULTS).pattern == "nginx:latest"
    assert parse_text("\u2018a b\u2019 host:x", "slack-trace", NOW, DEFAULTS).pattern == "a b"


# --- a flag's value that is the next option --------------------------------------------------

@pytest.mark.parametrize("surface", SURFACES)
def test_a_flag_does_not_take_the_next_option_as_its_value(surface):
    """`--host --json`: a forgotten value, not the host glob `--json` (argparse's rule too)."""
    with pytest.raises(QueryError, match="`--host` needs a value"):
        parse(["delete-cluster", "--host", "--json"], "trace", NOW, DEFAULTS, surface=surface)
    # a value starting with - is still given with = or as a word
    assert parse(["x", "--user=-j"], "trace", NOW, DEFAULTS, surface=surface).user == "-j"
    assert parse(["x", "user:-j"], "trace", NOW, DEFAULTS, surface=surface).user == "-j"


def test_cli_host_without_value_before_json_is_a_usage_error(capsys, tmp_path):
    code = cli.main(["trace", "--db", str(tmp_path / "none.db"), "delete-cluster", "--host", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and "`--host` needs a value" in err, err


# --- numbers: ASCII digits only, as ports already are --------------------------------------

@pytest.mark.parametrize("words", [["x", "listen:8_0"], ["x", "limit:\u0665"], ["x", "scope:\uff10"],
                                   ["x", "listen:+80"], ["x", "since:\uff11d"]])
def test_numbers_are_ascii_digits(words):
    with pytest.raises(QueryError):
        parse(words, "trace", NOW, DEFAULTS)


# --- times ---------------------------------------------------------------------------------

@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("when", ["2099-01-01", "0s", "0h0m"])
def test_since_not_in_the_past_is_an_error_in_trace_as_in_changes(when, surface):
    for command in ("trace", "changes"):
        pattern = ["x"] if command == "trace" else []
        with pytest.raises(QueryError, match="since:"):
            parse([*pattern, f"since:{when}"], command, NOW, DEFAULTS, surface=surface)
    # a window in the future with its end given is a question (nothing matches yet), not an error
    assert parse(["x", "since:2099-01-01", "until:2099-01-02"], "trace", NOW, DEFAULTS).since > NOW


@pytest.mark.parametrize("when", ["0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"])
def test_times_at_the_ends_of_the_calendar_are_refused_not_a_crash(when):
    with pytest.raises(QueryError, match="outside the times"):
        parse(["x", f"since:{when}"], "trace", NOW, DEFAULTS)


@pytest.mark.parametrize("argv", [["changes", "since:0001-01-01T00:00+01:00"],
                                  ["changes", "since:1d", "until:9999-12-31T23:59-01:00"],
                                  ["trace", "delete-cluster", "since:0001-01-01T00:00+01:00", "--json"]])
def test_cli_times_at_the_ends_of_the_calendar_are_usage_errors(argv, capsys, tmp_path):
    code = cli.main([*argv, "--db", str(tmp_path / "none.db")])
    err = capsys.readouterr().err
    assert code == 2 and "unexpected" not in err and "outside the times" in err, err


# --- the canonical form reads back to the same question -------------------------------------

@pytest.mark.parametrize("pattern", ["-x  y", "-x\ty", "x:y  z", "rm  -rf", "a -- b", "-- -x"])
@pytest.mark.parametrize("surface", SURFACES)
def test_a_pattern_with_runs_of_spaces_survives_the_canonical_form(pattern, surface):
    command = "trace" if surface == "cli" else "slack-trace"
    q = Question(command=command, pattern=pattern, since=NOW - 3600, texts={"since": "1h"})
    text = format(q)
    back = parse(shlex.split(text), command, NOW) if surface == "cli" else parse_text(text, command, NOW)
    assert back.pattern == pattern, text


def test_the_trace_page_question_of_a_spaced_dash_pattern_asks_it_again():
    ask = slack_ask.parse('to:10.0.5.10:443 -- "-x  y"', NOW)
    again = slack_ask.parse(slack_ask.canonical(ask), NOW)
    assert (again.pattern, again.to, again.since) == (ask.pattern, ask.to, ask.since) == ("-x  y", "10.0.5.10:443",
                                                                                            ask.since)


# --- global options: an empty value is not "not given" -------------------------------------

@pytest.mark.parametrize("argv", [["--db=", "trace", "x"], ["trace", "x", "--db="], ["--config=", "db", "stats"],
                                  ["canary", "list", "--config="]])
def test_an_empty_global_option_is_a_usage_error(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and ("--db" in err or "--config" in err) and "needs" in err, err


# --- the same through the real Slack app ---------------------------------------------------

@pytest.fixture(scope="module")
def slack(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("attacks") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    with SlackEmulator() as emu:
        cfg = config_mod.from_dict({"slack": http_slack(emu, default_since="7d", allowed_channels=["C1", "C2"])})
        from whodid.bot.slack.app import Bot
        bot = Bot(cfg, path, log=lambda m: None)
        bot.start()
        emu.url = bot._server.url
        yield emu
        bot.stop()


@pytest.mark.parametrize("text", ["delete-cluster since\uff1a3d", "delete-cluster \u2014since 3d",
                                  "delete-cluster since:2099-01-01", "delete-cluster --host --all",
                                  "delete-cluster since:0001-01-01T00:00+01:00"])
def test_slack_answers_the_asker_with_the_error(slack, text):
    status, body, _ = slack.slash(slack.url, text, channel_id="C1")
    assert status == 200
    said = json.loads(body)["text"] if body.startswith("{") else body
    assert said.startswith("whodid: ") and "/whodid help" in said, said


def test_slack_curly_quotes_find_what_straight_quotes_find(slack):
    status, body, _ = slack.slash(slack.url, "\u201cdelete-cluster\u201d since:3d", channel_id="C2")
    assert status == 200 and "whodid:" not in body, body
    top = slack.wait(lambda: (slack.top_level("C2") or [None])[0], what="the answer")
    assert top.text.startswith("jim"), top.text


# --- buttons and links carry the connection keys, and old values still work ------------------

KEY = b"k" * 32


def _raw_value(body: dict, key: bytes = KEY) -> str:
    import base64
    from whodid.bot.slack import buttons
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{buttons.VERSION}.{raw}.{buttons._sign(raw, key)}"


def test_a_button_keeps_to_from_listen_through_encode_wider_and_links():
    from whodid.bot.slack import buttons
    from whodid.bot.web import links
    for text, field, value in (("to:198.51.100.24:443", "to", "198.51.100.24:443"),
                               ("from:203.0.113.0/24:22", "from_", "203.0.113.0/24:22"),
                               ("python listen:8080", "listen", 8080)):
        ask = slack_ask.parse(text, NOW)
        for a in (ask, ask.wider(NOW)):
            back = buttons.decode(buttons.encode(buttons.View(a, 1, 2), KEY), KEY).ask
            assert getattr(back, field) == value and back == a
            link = links.check(links.make(a, 0, 0, NOW + 60, links.link_key(KEY)), links.link_key(KEY), NOW)
            assert getattr(link.ask, field) == value


def test_a_button_value_from_before_the_connection_keys_still_works():
    from whodid.bot.slack import buttons
    old = {"p": "delete-cluster", "h": None, "u": None, "s": NOW - 86400, "t": None, "w": "24h", "i": 0, "c": 1,
           "k": None}
    view = buttons.decode(_raw_value(old), KEY)
    assert (view.ask.pattern, view.ask.to, view.ask.from_, view.ask.listen, view.scope) == \
        ("delete-cluster", None, None, None, 1)


@pytest.mark.parametrize("extra", [{"to": "10.0.0.1", "l": 22}, {"to": ""}, {"to": "not a host!"}, {"l": 0},
                                   {"l": "22"}, {"fr": "10.0.0.1:99999"}])
def test_a_signed_value_with_a_bad_connection_key_is_refused(extra):
    """Even signed (a bug, or a key that leaked), a value must read as a question people could type."""
    from whodid.bot.slack import buttons
    body = {"p": "", "h": None, "u": None, "s": NOW - 86400, "t": None, "w": "24h", "i": 0, "c": 0, "k": None,
            **extra}
    with pytest.raises(buttons.StateError):
        buttons.decode(_raw_value(body), KEY)


def test_a_connection_key_added_to_a_value_breaks_its_signature():
    from whodid.bot.slack import buttons
    good = buttons.encode(buttons.View(slack_ask.parse("delete-cluster", NOW)), KEY)
    body = json.loads(__import__("base64").urlsafe_b64decode(good.split(".")[1] + "=="))
    forged = _raw_value({**body, "to": "10.0.0.1"}, key=b"x" * 32)
    with pytest.raises(buttons.StateError, match="signature"):
        buttons.decode(forged.split(".")[0] + "." + forged.split(".")[1] + "." + good.split(".")[2], KEY)


def test_slack_wider_window_of_a_connection_question_is_still_about_the_connection(slack):
    """No match before it happened; the wider window must ask about the same connection (jim's
    aws eks delete-cluster connected to 198.51.100.24:443 in the demo), not drop to:."""
    from test_slack import button
    slack.slash(slack.url, "to:198.51.100.24 since:3d until:2d", channel_id="C1")
    top = slack.wait(lambda: (slack.top_level("C1") or [None])[0], what="no match")
    assert "198.51.100.24" in str(top.blocks), top.blocks
    before = len(slack.top_level("C1"))
    slack.click(slack.url, top, "whodid.wider", button(top, "wider"))
    wider = slack.wait(lambda: len(slack.top_level("C1")) > before and slack.top_level("C1")[-1],
                       what="the wider search")
    # the button's value already carries the wider window (7 times a day: a week); the click
    # must ask that, not widen it again (49 days)
    from datetime import datetime
    ends = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S UTC")
            for t in re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", wider.text)]
    assert len(ends) == 2 and (ends[1] - ends[0]).days == 7, wider.text
    assert "connections to 198.51.100.24" in wider.text, wider.text
    # the window is said as times, not as the number of seconds since 1970
    assert " UTC to " in top.text and not re.search(r"\d{10}\.\d", top.text + wider.text), (top.text, wider.text)


# --- the doc says what the code says ---------------------------------------------------------

def test_the_docs_sample_errors_are_the_parsers_words():
    """docs/query.md's Errors section quotes these messages whole; a key added to the registry
    changed one of them without the doc following."""
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "query.md").read_text()
    for words in (["delete-cluster", "since:3x"], ["delete-cluster", "hots:web-1"], ["x", "--limit", "0"]):
        with pytest.raises(QueryError) as err:
            parse(words, "trace", NOW, DEFAULTS)
        assert f"    whodid: {err.value}\n" in doc, str(err.value)


@pytest.mark.parametrize("surface", SURFACES)
def test_until_before_a_defaulted_since_says_the_since_was_the_default(surface):
    with pytest.raises(QueryError) as err:
        parse(["x", "until:2020-01-01"], "trace", NOW, DEFAULTS, surface=surface)
    assert "`until:` is before `since:`" in str(err.value) and "'24h', the default" in str(err.value), err.value


@pytest.mark.parametrize("pattern", ["help", "HELP", "changes", "Changes", "?"])
def test_a_pattern_slack_would_read_as_its_own_command_is_written_after_dashes(pattern):
    """`/whodid -- help` traces "help"; the trace page's question, pasted back, must too - not
    show the help, nor run the changes review."""
    from whodid.bot import changes as changes_mod
    ask = slack_ask.parse(f"-- {pattern}", NOW)
    text = slack_ask.canonical(ask)
    assert not changes_mod.is_changes(text), text
    again = slack_ask.parse(text, NOW)
    assert again is not None and again.pattern == pattern, text
    assert parse(shlex.split(text), "trace", NOW).pattern == pattern


@pytest.mark.parametrize("word", ["delete-cluster\u00a0since:3d", "delete-cluster\u3000host:config-*",
                                  "\u200bsince:3d", "x\u202f--user=jim"])
@pytest.mark.parametrize("surface", SURFACES)
def test_a_key_glued_by_an_unusual_space_is_an_error_not_a_pattern_word(word, surface):
    with pytest.raises(QueryError, match="not a plain one"):
        parse([word], "trace", NOW, DEFAULTS, surface=surface)
    with pytest.raises(QueryError, match="not a plain one"):
        parse_text(word, "slack-trace", NOW, DEFAULTS)
    # a pattern word with such a space and no key in it is a pattern word; a key's value may end in one
    assert parse(["a\u00a0b"], "trace", NOW, DEFAULTS, surface=surface).pattern == "a\u00a0b"
    assert parse(["x", "since:3d\u00a0"], "trace", NOW, DEFAULTS, surface=surface).texts["since"] == "3d\u00a0"
