"""The query language under attack: what users (and hostile users) type that the grammar used
to read as something else without a word - a filter typed but not applied, a pattern changed
on the trace page, a time that crashed the answer - on every surface: the grammar itself
(bot/query.py), the CLI (whodid.bot.cli.main) and Slack (the real Bolt app over HTTP, signed
slash commands from tests/slackemu.py). Each test failed before its fix."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from slackemu import SIGNING_SECRET, SlackEmulator

from whodid import config as config_mod
from whodid.bot import cli, query
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
        cfg = config_mod.from_dict({"slack": {
            "default_since": "7d", "mode": "http", "bot_token": "xoxb-emulated", "signing_secret": SIGNING_SECRET,
            "listen": "127.0.0.1:0", "api_base_url": emu.api_base_url, "allowed_channels": ["C1", "C2"]}})
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
