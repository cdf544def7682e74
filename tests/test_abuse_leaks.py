"""Secrets and private files, attacked: where a secret could still leave a host or reach a
reader after redaction (issue 16 item 6), and where a file could still be read by others
(item 7). Command lines the rules must know are rows of tests/fixtures/secrets.tsv; this file
holds what a row cannot say: text that is not an argv, and files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest

from test_redact import SECRET, exec_event, store_bytes
from whodid.agent.redact import MASK, redact, redact_text
from whodid.tracer.events import MAX_STR


# --- a refused line is kept as text for people: it must not keep the secret --------------

def test_a_refused_line_cut_inside_its_secret_is_still_redacted():
    """An argument longer than the schema allows is refused, and its raw line is kept cut at
    2000 characters: the cut lands inside the string that holds the secret, which then has
    no closing quote."""
    line = json.dumps(exec_event(1, ["sh", "-c", f"PGPASSWORD={SECRET} psql -h db -c 'select 1'; " + "x" * 3000]))
    cut = line[:line.index(SECRET) + 200]
    out = redact_text(cut)
    assert SECRET not in out
    assert out == cut.replace(f"PGPASSWORD={SECRET}", f"PGPASSWORD={MASK}")


def test_a_refused_line_keeps_each_argv_apart_from_the_fields_after_it():
    """The strings of a JSON line are not one argv: `htpasswd -b FILE USER PASSWORD` has its
    password last in argv, not last in the line (`"cwd": "/root"` follows it)."""
    line = json.dumps(exec_event(1, ["htpasswd", "-b", "/etc/nginx/.htpasswd", "alice", SECRET]) | {"cwd": "/root"})
    out = redact_text(line)
    assert SECRET not in out
    assert out == line.replace(SECRET, MASK)          # and /root stays /root


def test_the_collector_keeps_no_secret_of_an_overlong_refused_line(tmp_path):
    from test_collector import post

    from whodid.collector.server import Collector, Limits
    from whodid.tracer import Store
    db = tmp_path / "c.db"
    store = Store.open(str(db), create=True)
    token = store.add_agent("web-1")
    store.close()
    c = Collector(str(db), "127.0.0.1", 0, limits=Limits(max_body=1 << 20, max_batch=4 << 20)).start()
    try:
        long = exec_event(1, ["bash", "-c", f"export AWS_SECRET_ACCESS_KEY={SECRET}; aws s3 sync /srv s3://b; "
                                            + "echo " * (MAX_STR // 5)])
        status, answer, _ = post(c, (json.dumps(long) + "\n").encode(), token=token)
        assert status == 200 or answer.get("refused_count") == 1, answer
        assert answer["refused_count"] == 1
    finally:
        c.stop()
    assert SECRET.encode() not in store_bytes(db)
    store = Store.open(str(db))
    raw = store.rejects()[0]["raw"]
    store.close()
    assert f"AWS_SECRET_ACCESS_KEY={MASK}; aws s3 sync" in raw


def test_whodid_agent_forward_redacts_before_the_spool_with_this_hosts_rules(tmp_path, monkeypatch, capsys):
    """`whodid-agent forward` ships events another program wrote: it redacts them as the
    agent redacts what it captures, with this host's rules (agent.redact_patterns, which the
    collector does not know), before they are spooled or leave the host."""
    from whodid.agent import cli as agent_cli
    from whodid.collector.server import Collector, Limits
    from whodid.tracer import Store
    db = tmp_path / "c.db"
    store = Store.open(str(db), create=True)
    token = store.add_agent("web-1")
    store.close()
    config = tmp_path / "whodid.yaml"
    config.write_text("agent:\n  redact_patterns: ['corp-[0-9]{6}']\n")
    src = tmp_path / "events.jsonl"
    src.write_text(json.dumps(exec_event(1, ["mysql", f"-p{SECRET}", "shop"])) + "\n"
                   + json.dumps(exec_event(2, ["deploy", "--ticket", "corp-123456"])) + "\n")
    monkeypatch.setenv("WHODID_AGENT_TOKEN", token)
    c = Collector(str(db), "127.0.0.1", 0, limits=Limits(max_body=1 << 20, max_batch=4 << 20)).start()
    try:
        spool = tmp_path / "spool.db"
        code = agent_cli.main(["forward", "--config", str(config), "--collector", c.url, "--spool", str(spool),
                               str(src)])
        assert code == 0, capsys.readouterr().err
    finally:
        c.stop()
    assert SECRET.encode() not in store_bytes(spool) and b"corp-123456" not in store_bytes(spool)
    assert b"corp-123456" not in store_bytes(db)
    store = Store.open(str(db))
    cmds = sorted(c for (c,) in store.db.execute("SELECT cmd FROM execs"))
    store.close()
    assert cmds == ["deploy --ticket ***", "mysql -p*** shop"]
