"""Issue 17, rule 4 on the real kernel: the real agent records `env MARK=1 sh -c 'exec sleep'` and a
wrapper script that execs the real command, and `whodid trace` shows each process once, with the
programs it was exec'd as, in order; `--limit` counts processes."""

import json
import os
import subprocess

import pytest

from whodid.bot import cli

from kit import store_with
from test_agent_live import REASON, run_agent_around

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-onematch-{os.getpid()}"


def trace(capsys, db, *args):
    code = cli.main(["trace", "--db", str(db), MARK, "--since", "1h", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    work = tmp_path_factory.mktemp("onematch")
    wrapper = work / "aws-wrap"
    # a wrapper script (like a pyenv/rbenv shim) that execs the real, marked command
    wrapper.write_text(f"#!/bin/sh\nexec /bin/sh -c 'sleep 0.2; :' {MARK}-real \"$@\"\n")
    wrapper.chmod(0o755)

    def workload():
        subprocess.run(["env", "MARK=1", "sh", "-c", "exec /bin/sleep 0.2", f"{MARK}-env"], check=True)
        subprocess.run([str(wrapper), f"{MARK}-wrapped"], check=True)

    events, _ = run_agent_around(work, [], workload)
    events = [e for e in events if e.get("kind") != "exec" or not e.get("snapshot")]
    db = work / "store.db"
    store_with(events, str(db)).close()
    return db, str(wrapper)


def test_each_process_is_one_match_with_its_exec_chain(recorded, capsys):
    db, wrapper = recorded
    doc = json.loads(trace(capsys, db, "--json", "--limit", "10"))
    pids = [m["poi"]["pid"] for m in doc["matches"]]
    assert len(pids) == 2 and len(set(pids)) == 2, pids      # two processes, not four execs
    wrapped, env = doc["matches"]                              # newest first
    assert [e["argv"][0] for e in env["execs"]] == ["env", "sh", "/bin/sleep"]
    assert env["execs"][0]["argv"][1] == "MARK=1"
    assert [e["poi"] for e in env["execs"]] == [False, True, False]      # anchored at the newest matching exec
    assert env["poi"]["argv"][-1] == f"{MARK}-env"
    assert wrapper in wrapped["execs"][0]["command"]            # the script, as the kernel ran it
    assert wrapped["execs"][1]["argv"][:2] == ["/bin/sh", "-c"] and f"{MARK}-real" in wrapped["execs"][1]["argv"]
    assert wrapped["poi"]["command"] == wrapped["execs"][1]["command"]
    text = trace(capsys, db, "--limit", "10")
    assert "Match 2 of 2" in text and "Match 3" not in text
    assert "exec'd as: env MARK=1 sh -c exec /bin/sleep 0.2" in text and " -> /bin/sleep 0.2" in text


def test_limit_counts_processes(recorded, capsys):
    db, _ = recorded
    both = json.loads(trace(capsys, db, "--json", "--limit", "2"))["matches"]
    (newest,) = json.loads(trace(capsys, db, "--json", "--limit", "1"))["matches"]
    assert [m["poi"]["pid"] for m in both][0] == newest["poi"]["pid"]
    assert both[0]["poi"]["pid"] != both[1]["poi"]["pid"]     # not two execs of the wrapper
    assert f"{MARK}-wrapped" in newest["poi"]["command"]
