"""Redaction: the fixture table of real-world secret-bearing command lines, the rules' promises
(idempotent, only the secret goes), and every path an event takes into the store redacting it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from whodid.agent.redact import MASK, compile_rules, redact
from whodid.tracer import shellwords
from whodid.tracer.redact import redact_events, secret_name

FIXTURE = Path(__file__).parent / "fixtures" / "secrets.tsv"


def table():
    rows = []
    for number, line in enumerate(FIXTURE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        given, expected, note = line.split("\t")
        argv = shlex.split(given)
        rows.append(pytest.param(argv, argv if expected == "(unchanged)" else shlex.split(expected), note,
                                 id=f"line{number}"))
    return rows


TABLE = table()


def test_the_table_is_big_and_has_negatives():
    assert len(TABLE) >= 50
    assert sum("NEGATIVE" in p.values[2] for p in TABLE) >= 8


@pytest.mark.parametrize("argv, expected, note", TABLE)
def test_each_command_line_loses_its_secret_and_nothing_else(argv, expected, note):
    out, changed = redact(argv)
    assert out == expected, note
    assert changed == (expected != argv)


@pytest.mark.parametrize("argv, expected, note", TABLE)
def test_redacting_twice_is_redacting_once(argv, expected, note):
    once = redact(argv)[0]
    assert redact(once) == (once, False)


def test_the_argv_given_is_not_changed():
    argv = ["mysql", "-phunter2"]
    redact(argv)
    assert argv == ["mysql", "-phunter2"]


def test_a_private_key_with_newlines_is_masked_whole():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq83n\n-----END RSA PRIVATE KEY-----\n"
    out, changed = redact(["sh", "-c", f"echo '{key}' > /tmp/k"])
    assert changed and "MIIE" not in out[2] and "q83n" not in out[2]
    assert out[2].startswith("echo '-----BEGIN RSA PRIVATE KEY-----") and out[2].endswith("' > /tmp/k")


def test_a_truncated_private_key_is_masked_to_the_end():
    out, _ = redact(["load-key", "-----BEGIN EC PRIVATE KEY-----MHcCAQEEIB"])
    assert out == ["load-key", f"-----BEGIN EC PRIVATE KEY-----{MASK}"]


def test_secret_names():
    for name in ("--password", "PGPASSWORD", "MYSQL_PWD", "REDISCLI_AUTH", "--db-pass", "SSHPASS", "--auth-token",
                 "client_secret", "--authorization", "ansible_become_pass", "-storepass"):
        assert secret_name(name), name
    for name in ("PWD", "--author", "GIT_AUTHOR_NAME", "--password-stdin", "--ask-pass", "--bypass", "--passive",
                 "PasswordAuthentication", "--authenticationDatabase", "--max-tokens", "--token-file", "SSH_ASKPASS"):
        assert not secret_name(name), name


def test_shell_words_keep_where_they_came_from():
    script = """cd /srv && PW='a b' mysql -p"x y" 2>&1 | tee log # done"""
    cmds = shellwords.commands(script)
    assert [[w.value for w in c] for c in cmds] == [["cd", "/srv"], ["PW=a b", "mysql", "-px y"], ["tee", "log"]]
    word = cmds[1][2]
    assert shellwords.apply(script, shellwords.replace(script, word, "-p***")) == \
        """cd /srv && PW='a b' mysql -p"***" 2>&1 | tee log # done"""


# --- moved from test_agent_units.py ---------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["mysql", "-u", "root", "-phunter2"], ["mysql", "-u", "root", f"-p{MASK}"]),
    (["tool", "--password=hunter2"], ["tool", f"--password={MASK}"]),
    (["tool", "--db-password", "hunter2", "--verbose"], ["tool", "--db-password", MASK, "--verbose"]),
    (["curl", "https://bob:s3cret@example.com/x"], ["curl", f"https://bob:{MASK}@example.com/x"]),
    (["curl", "-H", "Authorization: Bearer abcdef0123456789"], ["curl", "-H", f"Authorization: Bearer {MASK}"]),
    (["env", "AWS_SECRET_ACCESS_KEY=abc", "aws", "s3", "ls"], ["env", f"AWS_SECRET_ACCESS_KEY={MASK}", "aws", "s3", "ls"]),
    (["aws", "configure", "set", "aws_access_key_id", "AKIAABCDEFGHIJKLMNOP"],
     ["aws", "configure", "set", "aws_access_key_id", f"AKIA{MASK}"]),
    (["slack", "xoxb-1234567890-abcdefghij"], ["slack", f"xox{MASK}"]),
    (["git", "clone", "https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x"],
     ["git", "clone", f"https://gh_{MASK}@github.com/x"]),
])
def test_secrets_are_masked(argv, expected):
    out, changed = redact(argv)
    assert out == expected and changed


def test_ordinary_commands_are_untouched():
    for argv in (["aws", "eks", "delete-cluster", "--name", "prod"], ["ssh", "-p", "2222", "host"],
                 ["grep", "-r", "password", "/etc"], ["ls", "-p"]):
        assert redact(argv) == (argv, False)


def test_configured_patterns_add_to_the_defaults():
    rules = compile_rules([r"corp-[0-9]{6}"])
    assert redact(["deploy", "--ticket", "corp-123456"], rules) == (["deploy", "--ticket", MASK], True)


def test_a_configured_pattern_that_cannot_be_combined_still_masks():
    # global flags cannot sit inside the one-regex shortcut; such rules run without it
    rules = compile_rules([r"(?i)CORP-[0-9]{6}", r"(?P<x>tick)-(?P=x)"])
    assert redact(["deploy", "corp-123456", "tick-tick"], rules) == (["deploy", MASK, MASK], True)


def test_configured_patterns_reach_into_shell_scripts():
    rules = compile_rules([r"corp-[0-9]{6}"])
    assert redact(["sh", "-c", "deploy corp-123456 && echo ok"], rules) == (["sh", "-c", f"deploy {MASK} && echo ok"], True)


def test_events_are_redacted_in_place_and_odd_ones_left_alone():
    events = [{"kind": "exec", "argv": ["mysql", "-phunter2"]}, {"kind": "fork"}, {"kind": "exec", "argv": "x"}]
    assert redact_events(events) == 1
    assert events[0]["argv"] == ["mysql", f"-p{MASK}"] and events[2]["argv"] == "x"
