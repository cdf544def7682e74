"""`whodid config check`: every problem of a config file at once, each at its line; and the
files whodid ships (`whodid config example`, `whodid files`, `whodid-agent audit-rules`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from whodid import config, shipped
from whodid.agent import cli as agent_cli
from whodid.bot import cli
from whodid.config_check import check_text

ROOT = Path(__file__).parent.parent

# one mistake in each of many places; the comment at the end of each bad line names the
# problem expected there, so the lines are found in the text, never counted by hand
BROKEN = """\
store:
  retention: 30d
trace:
  gap_treshold: 5m            # unknown key `trace.gap_treshold`
  limit: five                 # `trace.limit` must be a whole number
agent:
  ringbuf_pages: 1000         # power of 2
  heartbeat: 0s               # `agent.heartbeat` must be longer than 0s
  unix_sockets:
    prefixes: [tmp/tmux-]     # neither a path
network:
  names:
    eks.us-east-1.amazonaws.com: [10.0.5.1/24]   # did you mean 10.0.5.0/24
slack:
  mode: sockets               # `slack.mode` is socket, http or off
identity:
  people:
    jim:                      # `identity.people.jim` takes only
      keys: []
canaries:
  - name: api
    every: 1m
    check: {type: http, url: "http://127.0.0.1:1/"}
    colour: red               # unknown key `colour`
  - name: db
    every: 1m                 # check needs a type
tracer: {}                    # unknown section `tracer`
"""


def expected(text: str) -> dict[int, str]:
    """line -> the words its comment says the problem has (a canary's: the line of its entry)."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if "#" in line:
            out[number] = line.split("#", 1)[1].strip()
    return out


def test_every_problem_is_reported_at_its_line():
    cfg, problems = check_text(BROKEN, "broken.yaml")
    want = expected(BROKEN)
    got = {p.line: p.message for p in problems}
    # "check needs a type" is the canary as a whole: said at its entry (`- name: db`)
    db_entry = BROKEN.splitlines().index("  - name: db") + 1
    want[db_entry] = want.pop(db_entry + 1)
    assert sorted(got) == sorted(want), "\n".join(p.show("broken.yaml") for p in problems)
    for line, words in want.items():
        assert words.strip("`").split("`")[0].split(" ")[0] in got[line], (line, words, got[line])
    assert [p.line for p in problems] == sorted(p.line for p in problems)       # in the file's order
    assert cfg.store.retention == "30d"           # what was good is kept


def test_loading_the_same_file_stops_at_its_first_problem(tmp_path):
    """A daemon does not start on half a config: load() raises, with the first problem."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(config.ConfigError, match="unknown section `tracer`"):
        config.load(str(path))


def test_collect_keeps_going_past_a_bad_section():
    raw = {"trace": {"limit": "five"}, "agent": {"ringbuf_pages": 3, "spool_when_full": "explode"},
           "collector": {"listen": "nowhere"}, "web": {"base_url": "ftp://x"}}
    cfg, problems = config.collect(raw, "c.yaml")
    said = "\n".join(str(p) for p in problems)
    for words in ("`trace.limit` must be a whole number", "`agent.ringbuf_pages` must be a power of 2",
                  "`agent.spool_when_full` is drop-oldest", "`collector.listen` wants HOST:PORT",
                  "`web.base_url` is a URL"):
        assert words in said
    assert len(problems) == 5
    assert all(str(p).startswith("c.yaml: ") for p in problems)
    assert cfg.trace.limit == config.TraceConfig().limit       # a bad key falls back to its default


def test_a_world_readable_file_with_a_token_is_a_problem_at_the_tokens_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("slack:\n  mode: socket\n  bot_token: xoxb-1-2\n")
    path.chmod(0o644)
    code = cli.main(["config", "check", str(path)])
    out, _ = capsys.readouterr()
    assert code == 2
    assert out.startswith(f"{path}:3: holds secrets (slack.bot_token)") and "chmod 600" in out
    path.chmod(0o600)
    assert cli.main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path}: sections slack;")


def test_a_yaml_syntax_error_says_its_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("trace:\n  limit: 5\nagent: [unclosed\n")
    assert cli.main(["config", "check", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:") and "not valid YAML" in out
    assert out.split(":")[1] in ("3", "4")          # where the flow sequence was left open


def test_check_on_the_cli_one_problem_a_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    code = cli.main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = out.splitlines()
    assert len(lines) == len(expected(BROKEN))
    assert all(line.startswith(f"{path}:") for line in lines)
    assert f"{len(lines)} problem(s)" in err


def test_check_reads_the_file_every_command_reads(tmp_path, monkeypatch, capsys):
    """No FILE: --config, then $WHODID_CONFIG, then the search path, as every command."""
    path = tmp_path / "env.yaml"
    path.write_text("trace: {limit: 0.5}\n")
    monkeypatch.setenv("WHODID_CONFIG", str(path))
    assert cli.main(["config", "check"]) == 2
    assert capsys.readouterr().out.startswith(f"{path}:1: `trace.limit`")
    good = tmp_path / "good.yaml"
    good.write_text("identity:\n  people:\n    jim: {accounts: [jim]}\n")
    assert cli.main(["config", "check", "--config", str(good)]) == 0
    assert "1 person" in capsys.readouterr().out
    monkeypatch.setenv("WHODID_CONFIG", str(tmp_path / "none.yaml"))
    assert cli.main(["config", "check"]) == 2
    assert "whodid config example >" in capsys.readouterr().err


def test_the_example_checks_ok_with_a_summary(capsys):
    assert cli.main(["config", "example"]) == 0
    text = capsys.readouterr().out
    assert text == (ROOT / "config.example.yaml").read_text()
    _, problems = check_text(text, "example.yaml")
    assert problems == []
    assert cli.main(["config", "check", str(ROOT / "config.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "people" in out and "canaries" in out


def test_the_shipped_files_are_the_checkouts(capsys):
    for name, path in [("config.example.yaml", "config.example.yaml"), ("audit.rules", "agent/audit.rules"),
                       ("manifest.yml", "bot/slack/manifest.yml")]:
        assert cli.main(["files", name]) == 0
        assert capsys.readouterr().out == (ROOT / path).read_text()
    for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        assert shipped.find(unit.name).text() == unit.read_text()
    assert cli.main(["files"]) == 0
    listing = capsys.readouterr().out
    assert all(s.name in listing for s in shipped.every())
    assert cli.main(["files", "nope.txt"]) == 2
    assert "ships no file named 'nope.txt'" in capsys.readouterr().err


def test_the_agent_prints_its_audit_rules_and_version(capsys):
    assert agent_cli.main(["audit-rules"]) == 0
    assert capsys.readouterr().out == (ROOT / "agent" / "audit.rules").read_text()
    for main, prog in ((agent_cli.main, "whodid-agent"), (cli.main, "whodid")):
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out.strip() == f"{prog} 0.1.0"


def test_messages_point_at_commands_an_installed_whodid_has():
    """Every message that names a shipped file says how to get it from an installed whodid."""
    for path in ("whodid", "bot", "agent", "tracer", "collector"):
        for source in (ROOT / path).rglob("*.py"):
            text = source.read_text()
            for stale in ("see config.example.yaml", "copy config.example.yaml", "with agent/audit.rules"):
                assert stale not in text, f"{source}: {stale!r}"
    assert os.path.exists(shipped.find("config.example.yaml").resource())


def test_a_canarys_token_in_a_readable_file_is_said_at_the_token(tmp_path):
    text = ("canaries:\n  - name: ok\n    every: 1m\n    check: {type: tcp, host: db, port: 5432}\n"
            "  - name: prod-api\n    every: 1m\n    check:\n      type: kubernetes\n"
            "      api_url: https://k8s:6443\n      path: /api/v1/namespaces/prod\n      token: abc\n")
    _, problems = check_text(text, "c.yaml", mode=0o640)
    token_line = text.splitlines().index("      token: abc") + 1
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(token_line, "holds secrets")]


@pytest.mark.parametrize("raw, words", [
    ({"identity": {"people": "jim"}}, "`identity.people` must be a mapping, got 'jim'"),
    ({"identity": {"shared_accounts": "root"}}, "`identity.shared_accounts` must be a list of strings"),
])
def test_a_list_or_mapping_key_of_the_wrong_shape_is_a_problem_not_a_crash(raw, words):
    """Before, `people: jim` reached the rules as a string and ended in AttributeError, and a
    string of shared accounts was taken letter by letter."""
    _, problems = config.collect(raw, "c.yaml")
    assert len(problems) == 1 and words in str(problems[0])


def laughs(levels: int = 9) -> str:
    """A "billion laughs" config: 9 lists of 9 aliases deep (9**9 values, a few hundred bytes),
    the anchors kept where no check looks first, the last alias where a message prints it."""
    anchors = ['        - &l0 ["x","x","x","x","x","x","x","x","x"]']
    anchors += [f"        - &l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return ("identity:\n  people:\n    jim:\n      accounts: [jim]\n      ssh_keys:\n" + "\n".join(anchors)
            + f"\ntrace:\n  limit: *l{levels - 1}\n")


def test_a_billion_laughs_config_is_refused_not_expanded(tmp_path):
    """Before: every command (and the agent) hung, printing 9**9 values into a message; a
    process with a deadline, so that a regression fails instead of hanging the suite."""
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs())
    for argv in (["trace", "x", "--config", str(path)], ["config", "check", str(path)]):
        out = subprocess.run([sys.executable, "-m", "whodid.bot.cli", *argv], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode == 2
        assert "values once its aliases (*name) are expanded" in out.stdout + out.stderr
    small = tmp_path / "small.yaml"              # aliases as people use them are fine
    small.write_text("identity:\n  shared_accounts: &shared [root, ubuntu]\nslack:\n  allowed_users: *shared\n")
    assert config.load(str(small)).slack.allowed_users == ["root", "ubuntu"]


def test_a_huge_value_is_shown_short(tmp_path):
    _, problems = config.collect({"trace": {"limit": "9" * 1_000_000 + "x"}}, "c.yaml")
    assert len(str(problems[0])) < 200


def test_a_file_that_is_not_a_config_is_not_read_whole(capsys):
    assert cli.main(["config", "check", "/dev/zero"]) == 2
    assert "over 4 MiB" in capsys.readouterr().err
    assert cli.main(["files", "../../../etc/passwd"]) == 2       # only the shipped names, no paths
    assert "ships no file named" in capsys.readouterr().err


def test_an_unquoted_off_is_off_not_a_type_error(tmp_path):
    """YAML 1.1 reads an unquoted `off` as false: the keys whose value may be "off" take it as
    off (adversarial review of issue 22), rather than refusing what the comments tell people to write."""
    text = "store:\n  retention: off\nweb:\n  listen: off\nslack:\n  mode: off\n"
    cfg, problems = check_text(text, "c.yaml")
    assert problems == []
    assert cfg.slack.mode == "off" and not cfg.web.enabled and cfg.store.retention == "off"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    path.chmod(0o600)
    assert config.load(str(path)).slack.mode == "off"
    # elsewhere a bare true/false for a string is still a problem, and says how to quote
    _, problems = check_text("slack:\n  listen: no\n", "c.yaml")
    assert len(problems) == 1 and "quote" in problems[0].message


def test_a_secret_of_the_wrong_type_is_not_echoed():
    """`whodid config check` output is pasted into tickets and chat: a token of the wrong shape
    is said without its value (adversarial review, issue 22)."""
    _, problems = check_text("slack:\n  bot_token: [xoxb-1234-supersecretvalue]\n  signing_secret: 123456789012345\n",
                             "c.yaml")
    shown = " ".join(p.show("c.yaml") for p in problems)
    assert len(problems) == 2 and "supersecret" not in shown and "123456789012345" not in shown, shown
    assert "`slack.bot_token` must be a string" in shown


def test_an_outputs_problem_is_said_at_its_line():
    text = ("store:\n  retention: 30d\noutputs:\n  - {name: siem, type: syslog}\n"
            "  - name: oncall\n    type: webhook\n    url: ftp://x\n    secret_file: /x\n")
    _, problems = check_text(text, "c.yaml")
    assert [p.line for p in problems] == [5], problems


def test_a_url_with_credentials_is_not_echoed_in_a_problem():
    _, problems = check_text("canaries:\n  - name: h\n    every: 1m\n    check: {type: http, url: "
                             "'ftp://u:supersecret@x/?token=alsosecret'}\n", "c.yaml")
    shown = " ".join(p.show("c.yaml") for p in problems)
    assert len(problems) == 1 and "supersecret" not in shown and "alsosecret" not in shown, shown
