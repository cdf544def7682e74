"""The query language (bot/query.py): every key in every form, the errors people see, the
canonical form read back, a key added by one registry row, and the CLI's global options anywhere.
The doc's examples run end to end in tests/test_query_table.py."""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, replace

import pytest

from whodid.bot import cli, query
from whodid.bot.query import COMMANDS, KEYS, Key, Question, QueryError, format, keys_for, parse, parse_text
from whodid.bot.slack import ask as slack_ask
from whodid.bot.slack.ask import HELP, Ask

NOW = 1_795_464_000.0                 # 2026-11-23T20:00Z
DEFAULTS = {"since": "24h"}


def forms(key: Key, value: str) -> list[list[str]]:
    return [[f"{key.name}:{value}"], [key.flag, value], [f"{key.flag}={value}"], [f"{key.name.upper()}:{value}"]]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_key_in_every_form_asks_the_same(command):
    pattern = ["delete-cluster"] if COMMANDS[command].pattern else []
    for key in keys_for(command):
        answers = []
        for words in forms(key, key.example):
            for surface in ("cli", "slack"):
                q = parse([*pattern[:1], *words, *pattern[1:]], command, NOW, DEFAULTS, surface=surface)
                answers.append(q)
                assert key.name in q.given
        assert all(a == answers[0] for a in answers), (key.name, answers)
        assert getattr(answers[0], key.attr) is not None


def test_keys_and_pattern_words_mix_in_any_order():
    a = parse(["kubectl", "since:3d", "delete", "--host", "prod-*", "pod", "--limit=3"], "trace", NOW, DEFAULTS)
    b = parse(["--limit", "3", "host:prod-*", "kubectl", "delete", "pod", "--since", "3d"], "trace", NOW, DEFAULTS)
    assert a == b
    assert (a.pattern, a.host, a.since, a.limit) == ("kubectl delete pod", "prod-*", NOW - 3 * 86400, 3)


@pytest.mark.parametrize("words, message", [
    (["x", "since:3d", "--since", "2d"], "since: is given twice ('3d' and '2d')"),
    (["x", "host:a", "host:b"], "host: is given twice ('a' and 'b')"),
    (["x", "form:3"], "unknown key `form:`; did you mean `from:`? keys for trace: since:, until:, host:, user:, scope:, limit:, to:, from:, listen:"),
    (["x", "fomr:3"], "unknown key `fomr:`; did you mean `from:`?"),
    (["to:10.0.5.10", "listen:80"], "`to:` and `listen:` ask two questions; ask by one of to:, from:, listen: at a time"),
    (["--to", "10.0.5.10:99999"], "--to '10.0.5.10:99999': port 99999 is out of range"),
    (["listen:http"], "listen: invalid int value 'http': use a whole number from 1 to 65535"),
    (["x", "hots:web-1"], "did you mean `host:`?"),
    (["x", "--sinc", "3d"], "unknown option `--sinc`; did you mean `--since`?"),
    (["x", "-rf"], "to search for a word starting with -, put it after `--`"),
    (["x", "nginx:latest"], "to search for a word with a colon, put it after `--`"),
    (["x", "since:"], "`since:` needs a value, like `since:3d`"),
    (["x", "--host"], "`--host` needs a value, like `--host config-*`"),
    (["x", "--host=", "--user", "jim"], "`--host` needs a value"),
    (["x", "--host", "--user", "jim"], "`--host` needs a value"),
    (["x", "since:3x"], "since: '3x' is neither a duration ago (90m, 1h30m, 7d) nor a date/time"),
    (["x", "--until", "soon"], "--until 'soon' is neither a duration ago"),
    (["x", "since:30m1h"], "write each unit once, largest first"),
    (["x", "since:99999999999999999999d"], "durations go up to 100 years"),
    (["x", "limit:abc"], "limit: invalid int value 'abc': use a whole number from 1 to 1000"),
    (["x", "--limit", "0"], "--limit must be at least 1"),
    (["x", "--limit", "1001"], "--limit must be at most 1000"),
    (["x", "scope:9"], "scope: invalid choice 9: use 0 to 3"),
    (["x", "since:1h", "until:2h"], "`until:` is before `since:`"),
    (["x", "host:a\x1b[2Jb"], "control characters"),
    (["since:3d"], "a pattern is required"),
    (["x" * 201], "keep it under 200"),
])
def test_errors_name_the_key_the_value_and_the_forms(words, message):
    with pytest.raises(QueryError) as info:
        parse(words, "trace", NOW, DEFAULTS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def spelling(message: str, key: str) -> str:
    """The message with the key's spelling (`since: 3d`, `since:3d`, `--since 3d`) made one."""
    return re.sub(rf"(--{key} ?|{key}: ?)", "KEY ", message)


def test_errors_are_the_same_in_either_form_but_for_the_spelling():
    for key in keys_for("trace"):
        bad = {"time": "3x", "int": "abc", "glob": "a\x01", "name": "a\x01", "destination": "10.0.5.0/99"}[key.kind]
        word, flag = [], []
        for words, out in (([f"{key.name}:{bad}"], word), ([key.flag, bad], flag)):
            with pytest.raises(QueryError) as info:
                parse(["x", *words], "trace", NOW, DEFAULTS)
            out.append(str(info.value))
        assert spelling(word[0], key.name) == spelling(flag[0], key.name), (word, flag)


def test_paths_urls_and_times_stay_patterns_and_dashes_escape():
    q = parse(["curl", "https://x/y:8", "/etc/a:b", "12:30"], "trace", NOW, DEFAULTS)
    assert q.pattern == "curl https://x/y:8 /etc/a:b 12:30"
    assert parse(["since:2h", "--", "docker", "pull", "nginx:latest", "--force"], "trace", NOW,
                 DEFAULTS).pattern == "docker pull nginx:latest --force"
    # Slack: a quoted word is a pattern word (the shell takes the CLI's quotes away); --word too
    q = parse_text('"nginx:latest" since:"1h 30m" --all', "slack-trace", NOW, DEFAULTS)
    assert (q.pattern, q.since, q.texts["since"]) == ("nginx:latest --all", NOW - 5400, "1h 30m")
    with pytest.raises(QueryError, match="quote it or put it after `--`"):
        parse_text("docker pull nginx:latest", "slack-trace", NOW, DEFAULTS)


def test_keys_that_do_not_apply_say_so():
    with pytest.raises(QueryError, match=r"`--limit` does not apply to /whodid; it takes since:, until:"):
        parse_text("x --limit 3", "slack-trace", NOW, DEFAULTS)
    with pytest.raises(QueryError, match="`scope:` does not apply to whodid changes"):
        parse(["scope:2"], "changes", NOW, DEFAULTS)
    with pytest.raises(QueryError, match="`yesterday` is not one of since:, until:, host:, user:"):
        parse(["yesterday"], "changes", NOW, DEFAULTS)


@pytest.mark.parametrize("text", [
    "delete-cluster", "'terraform destroy' host:prod-* since:3d", "/etc/nginx/nginx.conf user:jim until:1h",
    "-- nginx:latest", "-- rm -rf /", "since:'1h 30m' 'kubectl delete'", "x since:2026-11-23T10:00:00.000Z",
    "aws* --host 'config-*' --scope 2 --limit 7", "\"it's\" since:2026-11-23",
])
def test_the_canonical_form_reads_back_to_the_same_question(text):
    for surface, split in (("slack", query.words_of), ("cli", shlex.split)):   # as Slack reads it, as a shell does
        q = parse(split(text), "trace", NOW, DEFAULTS, surface=surface)
        again = parse(shlex.split(format(q)), "trace", NOW, DEFAULTS)
        assert again == q, (format(q), again, q)
        assert format(again) == format(q)


def test_a_link_shows_its_ask_in_the_canonical_form_and_it_reads_back():
    ask = Ask(pattern="nginx:latest", host="web-*", user="jim", since=NOW - 3600.5, until=NOW - 60,
              since_text="1h")
    text = slack_ask.canonical(ask)
    assert text.startswith("since:2026-11-23T18:59:59.500Z until:2026-11-23T19:59:00.000Z") and text.endswith("-- nginx:latest")
    back = slack_ask.parse(text, NOW + 9999)                    # later: the window is absolute
    assert (back.pattern, back.host, back.user, back.since, back.until) == \
        (ask.pattern, ask.host, ask.user, ask.since, ask.until)


# --- a new key is one row plus its field --------------------------------------------------------

@dataclass(frozen=True)
class WithNs(Question):
    ns: str | None = None


def test_a_key_added_by_one_registry_row_is_parsed_helped_and_formatted():
    ns = Key("ns", "text", "NAME", "prod", "only in this container namespace", query.TRACES,
             stands_for_pattern=True)
    keys = (*KEYS, ns)
    for words in (["ns:prod"], ["--ns", "prod"], ["--ns=prod"]):
        q = parse(words, "trace", NOW, DEFAULTS, keys=keys, into=WithNs)
        assert (q.ns, q.pattern) == ("prod", "")           # a trace needs no pattern with ns:
        assert parse(shlex.split(format(q, keys)), "trace", NOW, DEFAULTS, keys=keys, into=WithNs) == q
    assert "[ns:NAME]" in query.usage("trace", keys)
    assert any(line.startswith("ns:NAME") for line in query.help_lines("slack-trace", keys))
    with pytest.raises(QueryError, match="`ns:` does not apply to whodid changes"):
        parse(["ns:x"], "changes", NOW, DEFAULTS, keys=keys, into=WithNs)
    with pytest.raises(QueryError, match="unknown key `ns:`"):                 # not in the real registry
        parse(["x", "ns:prod"], "trace", NOW, DEFAULTS)


# --- help cannot drift ----------------------------------------------------------------------------

def test_slack_help_and_cli_help_list_every_key(capsys):
    text = HELP.format(since="24h")
    usage = re.search(r"`/whodid (PATTERN[^`]*)`", text).group(1)
    assert sorted(usage.split()[1:]) == sorted(f"[{k.name}:{k.metavar}]" for k in keys_for("slack-trace"))
    for k in keys_for("slack-trace"):
        assert f"- `{k.name}:` {k.help}" in text
    changes_usage = re.search(r"`/whodid changes ([^`]*)`", text).group(1)
    assert {w.strip("[]").split(":")[0] for w in changes_usage.split()} == {k.name for k in keys_for("changes")}
    for command in ("trace", "changes"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        for k in keys_for(command):
            assert f"{k.name}:{k.metavar}  (or {k.flag} {k.metavar})" in out


# --- the CLI: both forms, global options anywhere --------------------------------------------------

def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("query") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


def test_both_forms_give_the_same_answer_and_errors(demo_db, capsys):
    import json
    answers = []
    for argv in (["trace", "delete-cluster", "since:3d", "host:config-*"],
                 ["trace", "delete-cluster", "--since", "3d", "--host", "config-*"],
                 ["trace", "--host=config-*", "--since=3d", "delete-cluster"]):
        code, out, _ = run(capsys, *argv, "--json", "--db", demo_db)
        assert code == 0
        answers.append([(m["poi"]["pid"], m["attributed_to"]["user"]) for m in json.loads(out)["matches"]])
    assert answers[0] == answers[1] == answers[2] and answers[0]
    words = run(capsys, "changes", "since:3d", "--db", demo_db)
    flags = run(capsys, "changes", "--since", "3d", "--db", demo_db)
    assert words[0] == flags[0] == 0 and words[1].splitlines()[1:] == flags[1].splitlines()[1:]
    for a, b in ((["since:3x"], ["--since", "3x"]), (["limit:0"], ["--limit", "0"]),
                 (["scope:9"], ["--scope", "9"]), (["limit:x"], ["--limit", "x"])):
        e1, e2 = run(capsys, "trace", "x", *a, "--db", demo_db), run(capsys, "trace", "x", *b, "--db", demo_db)
        assert e1[0] == e2[0] == 2
        key = a[0].split(":")[0]
        assert spelling(e1[2], key) == spelling(e2[2], key)
        assert len(e1[2].strip().splitlines()) == 1


def test_global_options_go_anywhere(demo_db, tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("canaries:\n  - name: api-up\n    every: 5m\n    check: {type: tcp, host: 127.0.0.1, port: 9}\n")
    conf.chmod(0o600)
    for argv in (["--config", conf, "canary", "list"], ["canary", "list", "--config", conf],
                 ["canary", "--config", conf, "list"], ["canary", "list", f"--config={conf}"]):
        code, out, err = run(capsys, *argv, "--db", tmp_path / "none.db")
        assert code == 0 and "api-up" in out, (argv, out, err)
    outs = [run(capsys, *argv)[1] for argv in (["--db", demo_db, "db", "stats"], ["db", "stats", "--db", demo_db])]
    assert outs[0] == outs[1] and "hosts:" in outs[0]
    # after the question's words too, and both before and after: the later one wins
    code, out, _ = run(capsys, "--db", "/nonexistent.db", "trace", "delete-cluster", "--db", demo_db)
    assert code == 0 and "jim" in out
    code, _, err = run(capsys, "trace", "delete-cluster", "--config", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml does not exist" in err


def test_the_trace_page_shows_its_question_and_it_asks_the_same_again(demo_db):
    """Served over HTTP: the page's question, pasted after /whodid, is the link's question."""
    import html
    import urllib.request

    from whodid import config as config_mod
    from whodid.bot.demo import story as demo
    from whodid.bot.web.pages import TracePages
    pages = TracePages(config_mod.from_dict({"identity": {"people": demo.story_people()}}), demo_db,
                       log=lambda m: None)
    pages.start("127.0.0.1:0")
    try:
        now = time.time()
        ask = Ask(pattern="delete-cluster", host="config-*", user="jim", since=now - 86400, since_text="24h")
        with urllib.request.urlopen(pages.link(ask), timeout=60) as resp:
            body = resp.read().decode()
    finally:
        pages.stop()
    shown = html.unescape(re.search(r'<p id="question">Asked: <code>(.*?)</code>', body).group(1))
    assert shown.startswith("delete-cluster since:20") and "host:'config-*' user:jim" in shown
    back = slack_ask.parse(shown, now + 3600)
    assert (back.pattern, back.host, back.user, back.until) == (ask.pattern, ask.host, ask.user, None)
    assert back.since == pytest.approx(ask.since, abs=0.001)
    assert "<input" not in body and "<form" not in body            # no search box: the link is for one trace


def test_duration_and_yes_no_kinds_for_the_keys_to_come():
    """Kinds no key uses yet (the next keys will): a duration, and a yes/no that a bare --flag sets."""
    @dataclass(frozen=True)
    class More(Question):
        within: float | None = None
        listening: bool | None = None

    keys = (*KEYS, Key("within", "duration", "DURATION", "5m", "within this long", query.TRACES),
            Key("listening", "bool", "yes|no", "yes", "only listeners", query.TRACES))
    q = parse(["x", "within:1h30m", "--listening"], "trace", NOW, DEFAULTS, keys=keys, into=More)
    assert (q.within, q.listening) == (5400, True)
    assert parse(["x", "listening:no"], "trace", NOW, DEFAULTS, keys=keys, into=More).listening is False
    assert parse(shlex.split(format(q, keys)), "trace", NOW, DEFAULTS, keys=keys, into=More) == q
    with pytest.raises(QueryError, match="--within 'soon' is not a duration"):
        parse(["x", "--within", "soon"], "trace", NOW, DEFAULTS, keys=keys, into=More)
    with pytest.raises(QueryError, match="listening: 'maybe' is not yes or no"):
        parse(["x", "listening:maybe"], "trace", NOW, DEFAULTS, keys=keys, into=More)


def test_the_pages_question_is_escaped():
    """The question comes from whoever asked: on the page it is text, never markup."""
    from whodid.bot.web.pages import with_question
    ask = Ask(pattern="</code><script>alert(1)</script>", host="<b>", since=NOW - 60, since_text="1m")
    page = with_question("<main><header><h1>t</h1></header></main>", slack_ask.canonical(ask))
    assert "<script>" not in page and "<b>" not in page and "&lt;script&gt;" in page
    assert page.index('<p id="question">') < page.index("</header>")
