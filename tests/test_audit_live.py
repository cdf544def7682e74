"""auditd for real: while a scripted ssh + sudo session runs on a simulated host (real sshd,
real sudo), auditd logs it with agent/audit.rules and the BPF agent records it too. The
audit importer must recover the same chain the agent does."""

import os

import pytest

from auditd import Auditd, missing
from test_agent_live import REASON

from whodid.agent.lab import B, LAPTOP, Lab, missing_tools
from whodid.bot import cli
from whodid.tracer import Identity, Person, Query, Store, Tracer

WHY = REASON or missing() or (("missing " + ", ".join(missing_tools())) if missing_tools() else None)
if os.environ.get("CI") and WHY:
    pytest.fail(f"CI must run the auditd test, but: {WHY}", pytrace=False)
pytestmark = pytest.mark.skipif(bool(WHY), reason=str(WHY))


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    work = tmp_path_factory.mktemp("audit")
    with Auditd(work / "auditd") as auditd, Lab(work / "bpf.db") as lab:
        res = lab.ssh_from_laptop("jim", f"ec2-user@{B}", f"sudo -i {lab.work}/bin/aws eks delete-cluster --name prod")
        assert "pretend done" in res.stdout, res.stderr
        keys = dict(lab.keys)
        lab.stop_hosts()
        auditd.stop()
    audit_db = str(work / "audit.db")
    assert cli.main(["import-audit", str(auditd.log), "--host", "host-b", "--db", audit_db]) == 0
    return {"bpf": Store.open(work / "bpf.db"), "audit": Store.open(audit_db), "keys": keys, "log": auditd.log}


def chain_of(store, ident=None):
    matches = [t for t in Tracer(store, ident).find(Query(pattern="delete-cluster", host="host-b", limit=10))
               if t.poi.program != "sudo"]
    assert matches, "no trace of the delete"
    return matches[0]


def test_the_importer_recovers_the_chain_the_bpf_agent_recorded(both):
    bpf = chain_of(both["bpf"], Identity(people=(Person("jim", ssh_keys=(both["keys"]["jim"],)),)))
    audit = chain_of(both["audit"])
    steps = lambda tr: [(s.edge, s.user, s.program) for s in tr.chain]
    assert steps(audit) == steps(bpf), (steps(audit), steps(bpf))
    assert audit.chain[0].login["user"] == "ec2-user" and audit.chain[0].login["raddr"] == LAPTOP
    assert audit.chain[0].login["rport"] == bpf.chain[0].login["rport"]           # the same connection
    assert bpf.attributed.user == "jim"                    # the agent also read sshd's key from its log;
    assert audit.attributed.account == "ec2-user"          # audit has no key: the shared account it is
    assert audit.poi.command == bpf.poi.command and audit.poi.user == "root"


def test_the_import_reports_what_it_read_and_used(both, capsys):
    cli.main(["import-audit", str(both["log"]), "--host", "host-b", "--db", both["audit"].path])
    out = capsys.readouterr().out
    assert "SYSCALL" in out and "EXECVE" in out and "used" in out


def test_the_agent_follows_a_live_audit_log_across_rotation(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "events.jsonl"
    with Auditd(tmp_path / "auditd") as auditd:
        agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--audit-log", str(auditd.log),
                                  "--host", "audited", "--out", str(out), "--flush-interval", "0.2",
                                  "--ready-file", str(tmp_path / "ready")], stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(300):
                if (tmp_path / "ready").exists() or agent.poll() is not None:
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            subprocess.run(["echo", "before-rotation", "--password=hunter2"], stdout=subprocess.DEVNULL)
            time.sleep(1.0)
            auditd.proc.send_signal(signal.SIGUSR1)          # auditd rotates: audit.log -> audit.log.1
            for _ in range(100):
                if (auditd.log.parent / "audit.log.1").exists():
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            subprocess.run(["echo", "after-rotation"], stdout=subprocess.DEVNULL)
            time.sleep(4.0)                                  # quiet: groups complete after 2 s
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    import json
    events = [json.loads(line) for line in out.read_text().splitlines()]
    cmds = [" ".join(e["argv"]) for e in events if e["kind"] == "exec" and e["host"] == "audited"]
    assert any("before-rotation" in c for c in cmds) and any("after-rotation" in c for c in cmds), cmds[-20:]
    assert "echo before-rotation --password=***" in cmds              # redacted at the agent
    assert "following the audit log" in err
