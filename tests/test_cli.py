"""The `whodid` command end to end, on the demo store built through the real ingest path."""

import json
import os
import random
import re
import subprocess
import sys

import pytest

from whodid.bot import cli
from whodid.bot.demo import story as demo
from whodid.tracer import Query, Store, Tracer, ingest
from whodid.tracer.render import traces_json


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("demo") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def trace_json(capsys, db, *args):
    code, out, err = run(capsys, "trace", "--db", db, *args, "--json")
    return code, json.loads(out)


def test_demo_answers_who_deleted_the_cluster(tmp_path, capsys):
    path = str(tmp_path / "d.db")
    code, out, _ = run(capsys, "demo", "--db", path)
    assert code == 0
    assert f"Building the demo store at {path}" in out
    assert "Who:  jim" in out
    assert "How:  jim -> jump-box -> config-server (ec2-user), sudo to root" in out
    # ...and the canary's side of the story: the alert already names jim
    assert "Canary prod-cluster is failing: cluster prod is gone: 404" in out
    assert "1. jim ran `aws eks delete-cluster --name prod` on config-server" in out
    assert (tmp_path / "alerts").is_dir() and list((tmp_path / "alerts").glob("prod-cluster-*-suspect-1.png"))
    assert "aws eks delete-cluster --name prod  <== matched" in out
    assert "bob" not in out.split("$ whodid trace dropdb")[0]
    # ...the second story: dropdb typed in the tmux session jim started, while only bob was attached
    dropdb = out.split("$ whodid trace dropdb")[1].split("$ whodid serve")[0]
    assert "Who:  bob - bob was the only person attached to the tmux server" in dropdb
    assert "Confidence: inferred" in dropdb and "started by jim" in dropdb
    assert "bob: attached from" in dropdb and "`tmux attach -t maint`" in dropdb
    # ...and the day's changes as the digest has them: the deletion unplanned, the deploys planned
    digest = out.split("$ whodid changes since:24h")[1].split("Try next:")[0]
    unplanned, planned = digest.split("\nPLANNED (")
    jim = re.split(r"\n  (?=\S)", unplanned.split("\n  jim - ")[1])[0]          # up to the next person
    assert "why unplanned: human, not a pipeline" in jim and "aws eks delete-cluster --name prod" in jim
    assert "deploy pipeline: 8 changes on 8 hosts" in planned and "in daily deploy window" in planned
    assert "delete-cluster" not in planned
    # run again: the demo rebuilds its own store instead of piling onto it
    code, out2, _ = run(capsys, "demo", "--db", path)
    assert code == 0 and "Who:  jim" in out2
    assert Store.open(path).counts()["logins"] == Store.open(path).counts()["logins"]


def test_demo_default_location_is_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert f"Building the demo store at {tmp_path}/whodid/demo.db" in out


def test_demo_will_not_overwrite_a_real_store(tmp_path, capsys):
    path = tmp_path / "real.db"
    Store.open(path, create=True).close()
    code, _, err = run(capsys, "demo", "--db", str(path))
    assert code == 2
    assert "is not a demo store; the demo will not overwrite it" in err


def test_trace_json_on_the_demo_store(demo_db, capsys):
    code, doc = trace_json(capsys, demo_db, "delete-cluster", "--since", "24h")
    assert code == 0
    (m,) = doc["matches"]
    who = m["attributed_to"]
    assert (who["user"], who["host"], who["source"]) == ("jim", "jump-box", "203.0.113.7")
    chain = m["chain"]
    assert chain[0]["edge"] == "login" and chain[0]["user"] == "jim"
    assert [c["host"] for c in chain if c["edge"] in ("login", "ssh")] == ["jump-box", "config-server"]
    sudo = [c for c in chain if c["edge"] == "sudo"]
    assert [(s["command"], s["user"], s["login_user"]) for s in sudo] == [("sudo -i", "root", "ec2-user")]
    poi = m["poi"]
    assert (poi["host"], poi["user"], poi["login_user"]) == ("config-server", "root", "ec2-user")
    pauses = [g["seconds"] / 3600 for g in m["gaps"]]
    assert len(pauses) == 2 and 2.9 < pauses[0] < 3.3 and 0.9 < pauses[1] < 1.2
    assert not any(c["inferred"] for c in chain)


def test_bobs_commands_are_bobs(demo_db, capsys):
    code, doc = trace_json(capsys, demo_db, "aws", "--host", "config-server", "--since", "24h", "--limit", "20")
    people = {m["poi"]["command"]: m["attributed_to"]["user"] for m in doc["matches"]}
    assert people["aws eks delete-cluster --name prod"] == "jim"
    assert people["aws eks describe-cluster --name prod"] == "bob"
    assert people["aws eks update-kubeconfig --name prod"] == "bob"
    assert set(people.values()) == {"jim", "bob"}


def test_file_question_on_the_demo_store(demo_db, capsys):
    code, doc = trace_json(capsys, demo_db, "/etc/nginx/nginx.conf", "--limit", "10")
    assert code == 0 and doc["matches"]
    assert {m["attributed_to"]["user"] for m in doc["matches"]} == {"alice"}
    assert all(m["poi"]["change"]["op"] == "write" for m in doc["matches"])


def test_deploy_pipeline_has_no_login(demo_db, capsys):
    code, doc = trace_json(capsys, demo_db, "systemctl restart app", "--limit", "1")
    (m,) = doc["matches"]
    assert m["chain"][0]["command"] == "/usr/bin/gitlab-runner run"
    assert m["attributed_to"]["login_time"] is None
    assert m["attributed_to"]["user"] == "gitlab-runner"       # the pipeline, not the account it logs in to
    assert [c["host"] for c in m["chain"] if c["edge"] == "ssh"] == [m["poi"]["host"]]


def test_demo_answer_does_not_depend_on_arrival_order(tmp_path):
    now = 1_790_000_000.0
    fleet, truth = demo.build(now)
    events = fleet.events()
    answers = []
    for seed in (1, 2):
        random.Random(seed).shuffle(events)
        store = Store.open(tmp_path / f"{seed}.db", create=True)
        assert ingest(store, events).rejected == 0
        q = Query(pattern="aws", since=now - 86400, limit=20, scope=1)
        doc = traces_json(q, Tracer(store).find(q), now)
        for m in doc["matches"]:
            m["graph"] = sorted((n["host"], n["pid"], n["command"], n["start"]) for n in m["graph"]["nodes"])
        answers.append(doc)
    assert answers[0] == answers[1]
    delete = [m for m in answers[0]["matches"] if "delete-cluster" in m["poi"]["command"]][0]
    assert delete["poi"]["pid"] == truth["delete_pid"]


def test_no_match_says_what_was_searched(demo_db, capsys):
    code, out, _ = run(capsys, "trace", "--db", demo_db, "drop-database", "--since", "2h")
    assert code == 1
    assert "No commands matching `drop-database` over the last 2h." in out
    assert "--since 30d" in out


@pytest.mark.parametrize("args, words", [
    (["trace", "x", "--since", "yesterday"], "'yesterday' is neither a duration"),
    (["trace", "x", "--db", "/nonexistent/dir/x.db"], "no whodid store at /nonexistent/dir/x.db"),
    (["trace", "x", "--limit", "0"], "--limit must be at least 1"),
])
def test_errors_are_one_clear_line(demo_db, capsys, args, words):
    if "--db" not in args:
        args = [*args, "--db", demo_db]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert words in err
    assert "Traceback" not in err


def test_ingest_reports_refusals_and_keeps_the_rest(tmp_path, capsys):
    f = tmp_path / "events.jsonl"
    good = {"v": 1, "kind": "exec", "host": "h", "boot": "b", "ts": 1.0, "pid": 5, "start": 5,
            "argv": ["ls"], "uid": 0, "euid": 0}
    f.write_text(json.dumps(good) + "\n" + '{"v": 1, "kind": "exec"}\n' + "garbage\n")
    db = str(tmp_path / "s.db")
    code, out, _ = run(capsys, "ingest", "--db", db, str(f))
    assert code == 1
    assert "1 of 3 events accepted" in out
    assert "event 2: host: required" in out
    assert "event 3: json: not valid JSON" in out
    assert Store.open(db).counts()["execs"] == 1


def test_db_stats(demo_db, capsys):
    code, out, _ = run(capsys, "db", "stats", "--db", demo_db)
    assert code == 0
    assert "hosts: 22" in out and "events from" in out and "MB on disk" in out
    store = Store.open(demo_db)
    execs = store.db.execute("SELECT count(*) FROM execs e JOIN procs p ON p.id = e.proc JOIN boots b "
                             "ON b.id = p.boot JOIN hosts h ON h.id = b.host WHERE h.name = 'config-server'").fetchone()[0]
    (row,) = [line.split() for line in out.splitlines() if line.split()[:1] == ["config-server"]]
    assert int(row[1].replace(",", "")) == execs                     # the exec column, per host
    total = [line.split() for line in out.splitlines() if line.split()[:1] == ["total"]][0]
    assert int(total[1].replace(",", "")) == store.counts()["execs"]


def test_db_prune_and_vacuum(tmp_path, capsys):
    db = str(tmp_path / "d.db")
    assert cli.main(["demo", "--db", db]) == 0
    capsys.readouterr()
    before = Store.open(db).counts()
    code, out, _ = run(capsys, "db", "prune", "--db", db, "--older-than", "1d", "--dry-run")
    assert code == 0 and "would remove" in out and Store.open(db).counts() == before
    code, out, _ = run(capsys, "db", "prune", "--db", db, "--older-than", "1d")
    assert code == 0 and "removed" in out and "whodid db vacuum" in out
    after = Store.open(db).counts()
    assert after["execs"] < before["execs"]
    code, out, _ = run(capsys, "trace", "delete-cluster", "--db", db)
    assert code == 0 and "How:  jim -> jump-box -> config-server (ec2-user), sudo to root" in out
    code, out, err = run(capsys, "db", "vacuum", "--db", db)
    assert code == 0 and " MB -> " in out and "vacuuming" in err


def test_tokens(tmp_path, capsys):
    db = str(tmp_path / "t.db")
    code, out, err = run(capsys, "token", "add", "web-1", "--db", db)
    token = out.strip()
    assert code == 0 and token.startswith("wdt_") and "shown this once" in err
    assert Store.open(db).agent_for_token(token) == "web-1"
    assert token not in open(db, "rb").read().decode("latin-1")          # only the hash is kept
    code, out, _ = run(capsys, "token", "list", "--db", db)
    assert "web-1" in out and "active" in out
    assert run(capsys, "token", "revoke", "web-1", "--db", db)[0] == 0
    assert Store.open(db).agent_for_token(token) is None
    code, _, err = run(capsys, "token", "revoke", "web-1", "--db", db)
    assert code == 2 and "web-1 has no active token" in err
    code, _, err = run(capsys, "token", "add", "--db", db)
    assert code == 2 and "needs the host's name" in err


def test_serve_explains_a_bad_listen_address(tmp_path, capsys):
    code, _, err = run(capsys, "serve", "--db", str(tmp_path / "s.db"), "--listen", "nowhere")
    assert code == 2 and "wants HOST:PORT" in err


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "whodid")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "whodid demo" in out and "trace" in out


def test_live_demo_explains_why_it_cannot_run(tmp_path, capsys, monkeypatch):
    # as an ordinary user (simulated: the test itself may run as root)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = cli.main(["demo", "--live", "--db", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert code == 2
    assert "the live demo cannot run here; it needs root" in err
    assert "whodid-agent doctor" in err
    assert not (tmp_path / "x.db").exists()


def test_keep_for_pins_a_trace_past_retention(tmp_path, capsys):
    from kit import copy_store
    pinned, unpinned = str(tmp_path / "p.db"), str(tmp_path / "u.db")
    assert cli.main(["demo", "--db", pinned]) == 0
    Store.open(pinned).db.execute("DELETE FROM pins")            # the demo's canary alert pinned it already
    copy_store(pinned, unpinned)
    capsys.readouterr()
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", pinned, "--keep-for", "90d")
    assert code == 0 and "kept past retention until" in err
    for db in (pinned, unpinned):
        assert run(capsys, "db", "prune", "--db", db, "--older-than", "1h")[0] == 0
    code, out, _ = run(capsys, "trace", "delete-cluster", "--db", unpinned)
    assert code == 1                                         # an hour's retention forgot it...
    code, out, _ = run(capsys, "trace", "delete-cluster", "--db", pinned)
    assert code == 0 and "How:  jim -> jump-box -> config-server (ec2-user), sudo to root" in out   # ...unless pinned
    assert "pinned past retention:" in run(capsys, "db", "stats", "--db", pinned)[1]
