"""Files are private: what whodid creates is 0600 and its directories 0700 whatever the umask,
the agent refuses a token file others can read, and the signing key lives outside the store.

Each creation runs in a child process with umask 000 - the umask is process-wide, so the test
must not change its own - and reports the mode of everything it made while it was still open
(SQLite removes -wal and -shm at the last close)."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from whodid import private
from whodid.agent import cli as agent_cli
from whodid.bot.web import links
from whodid.bot.slack import buttons
from whodid.bot.slack.ask import Ask
from whodid.tracer import Store

EVENTS = [{"v": 1, "kind": "exec", "host": "h", "boot": "b", "ts": 1_700_000_000.0 + i, "pid": 10 + i, "start": 5,
           "argv": ["ls", str(i)], "uid": 0, "euid": 0} for i in range(3)]


def made_under_umask_000(tmp_path, code: str) -> dict[str, int]:
    """Run code (which gets `base`, a fresh directory) with umask 000 in a child; return the
    mode of every file and directory under base, as the code saw them before it returned."""
    base = tmp_path / "base"
    base.mkdir()
    script = textwrap.dedent("""
        import json, os, sys
        os.umask(0)
        base = sys.argv[1]
        def modes():
            out = {}
            for root, dirs, files in os.walk(base):
                for name in dirs + files:
                    p = os.path.join(root, name)
                    out[os.path.relpath(p, base)] = os.lstat(p).st_mode & 0o7777
            return out
    """) + textwrap.dedent(code) + "\nprint(json.dumps(modes()))\n"
    done = subprocess.run([sys.executable, "-c", script, str(base)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_private(modes: dict[str, int], base, expect: list[str]):
    for name in expect:
        assert name in modes, (name, sorted(modes))
    for name, mode in modes.items():
        want = 0o700 if (base / name).is_dir() else 0o600
        assert mode == want, f"{name} is {mode:04o}, want {want:04o}"


def test_the_store_its_wal_shm_and_directories(tmp_path):
    modes = made_under_umask_000(tmp_path, f"""
        from whodid.tracer import Store
        store = Store.open(os.path.join(base, "a", "b", "s.db"), create=True)
        store.write({EVENTS!r})
        print(json.dumps(modes()))          # -wal and -shm exist while the store is open
        raise SystemExit(0)
    """)
    assert_private(modes, tmp_path / "base", ["a", "a/b", "a/b/s.db", "a/b/s.db-wal", "a/b/s.db-shm"])


def test_the_agents_spool_and_out_file(tmp_path):
    modes = made_under_umask_000(tmp_path, f"""
        from whodid.agent.spool import Spool
        from whodid.agent.cli import Sink
        spool = Spool(os.path.join(base, "spool", "spool.db"))
        spool.put({EVENTS!r})
        sink = Sink(None, os.path.join(base, "events.jsonl"))
        sink.write({EVENTS!r})
        print(json.dumps(modes()))
        raise SystemExit(0)
    """)
    assert_private(modes, tmp_path / "base", ["spool", "spool/spool.db", "spool/spool.db-wal", "spool/spool.db-shm",
                                              "events.jsonl"])


def test_pages_pictures_alerts_and_the_key_of_the_cli(tmp_path):
    modes = made_under_umask_000(tmp_path, """
        from whodid.bot import cli
        db = os.path.join(base, "d", "demo.db")
        assert cli.main(["demo", "--db", db]) == 0          # the store, its picture, the alert files
        assert cli.main(["trace", "delete-cluster", "--db", db, "--link",
                         "--html", os.path.join(base, "t.html"), "--png", os.path.join(base, "t.png")]) == 0
    """)
    base = tmp_path / "base"
    alerts = [n for n in modes if n.startswith("d/alerts/")]
    assert {os.path.splitext(n)[1] for n in alerts} == {".txt", ".json", ".png"}
    assert_private(modes, base, ["d", "d/demo.db", "d/demo.png", "d/demo.db.key", "d/alerts", "t.html", "t.png"])


def test_digest_files(tmp_path):
    modes = made_under_umask_000(tmp_path, """
        from dataclasses import replace
        from whodid.config import Config
        from whodid.bot.changes import DigestJob
        from whodid.tracer import Store
        from whodid.tracer.changes import parse_rules
        db = os.path.join(base, "s.db")
        Store.open(db, create=True).close()
        cfg = replace(Config(), changes=parse_rules({"digest": {"channel": "#changes"}}))
        DigestJob(cfg, db, bot=None, out_dir=os.path.join(base, "digests", "x"), log=lambda m: None).run()
    """)
    digests = [n for n in modes if n.startswith("digests/x/changes-")]
    assert digests
    assert_private(modes, tmp_path / "base", ["digests", "digests/x", "s.db"])


def test_a_rewritten_page_is_private_and_a_planted_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    page = tmp_path / "page.html"
    page.symlink_to(victim)                 # what someone else could leave in a shared /tmp
    private.write_file(page, "<html>")
    assert victim.read_text() == "precious"
    assert not page.is_symlink() and page.read_text() == "<html>"
    os.chmod(page, 0o644)
    private.write_file(page, "<html> again")
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o600


# --- the agent's token --------------------------------------------------------------------

def agent_config(tmp_path, token_mode: int) -> str:
    token = tmp_path / "token"
    token.write_text("wdt_secret\n")
    os.chmod(token, token_mode)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"agent:\n  token_file: {token}\n  spool: {tmp_path / 'spool.db'}\n")
    return str(cfg)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_the_agent_refuses_a_token_file_others_can_read(tmp_path, capsys, monkeypatch, mode):
    monkeypatch.delenv("WHODID_AGENT_TOKEN", raising=False)
    code = agent_cli.main(["forward", "--config", agent_config(tmp_path, mode), "--collector", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"chmod 600 {tmp_path / 'token'}" in err and f"{mode:04o}" in err


def test_the_agent_takes_a_private_token_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WHODID_AGENT_TOKEN", raising=False)
    code = agent_cli.main(["forward", "--config", agent_config(tmp_path, 0o600), "--collector", "http://127.0.0.1:9"])
    assert code == 0, capsys.readouterr().err


# --- the signing key --------------------------------------------------------------------------

def test_the_signing_key_lives_beside_the_store_not_in_it(tmp_path):
    db = str(tmp_path / "s.db")
    Store.open(db, create=True).close()
    key = buttons.store_key(db)
    assert buttons.store_key(db) == key                          # made once, then read
    assert stat.S_IMODE(os.stat(db + ".key").st_mode) == 0o600
    store = Store.open(db)
    assert store.get_meta("button_key") is None
    store.close()
    raw = open(db, "rb").read() + (open(db + "-wal", "rb").read() if os.path.exists(db + "-wal") else b"")
    assert key not in raw and key.hex().encode() not in raw


def test_a_key_kept_in_an_old_store_moves_out_and_its_links_stay_valid(tmp_path):
    db = str(tmp_path / "old.db")
    store = Store.open(db, create=True)
    old = os.urandom(32)
    store.set_meta("button_key", old.hex())                      # as whodid kept it before
    store.close()
    ask = Ask(pattern="delete-cluster", host=None, user=None, since=1.0, until=None, since_text="24h")
    token = links.make(ask, 0, 0, 2e9, links.link_key(old))
    assert buttons.store_key(db) == old
    assert links.check(token, links.link_key(buttons.store_key(db)), 1e9).ask == ask
    store = Store.open(db)
    assert old.hex() not in (store.get_meta("button_key") or "")
    store.close()
    assert stat.S_IMODE(os.stat(db + ".key").st_mode) == 0o600


def test_a_key_file_others_can_read_is_refused(tmp_path):
    db = str(tmp_path / "s.db")
    Store.open(db, create=True).close()
    buttons.store_key(db)
    os.chmod(db + ".key", 0o644)
    with pytest.raises(private.PrivateFileError, match="chmod 600"):
        buttons.store_key(db)
