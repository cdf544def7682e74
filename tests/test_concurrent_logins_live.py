"""Logins at the same instant, for real: jim and bob ssh to the same host from the same address
at once, four connections at a time, each session over within a second. Each login the agent
records must be joined to its own connection's sshd process - the one its session's commands
descend from, with its own client port and key - never to another connection's.

Seen in the namespaced lab: sshd's listener accepted 55320 and forked, then accepted 55330 and
forked; in a pid namespace the agent knows a child by its own pid only at its first record, and
the second child ran first, so both logins were joined to it and the Tracer, seeing two logins
on one process, named no one. Played three times: in the lab (agents in pid namespaces, `sshd -E`
lines without a pid), and on this machine in the agent's normal mode with sshd on a loopback
port, logging with `-E` or through syslog (`sshd[PID]: Accepted ...`, as auth.log has it), or
with its lines reaching the agent only after every session has ended (a slow log pipeline).
"""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from whodid.agent.lab import B, LAPTOP, SSH_OPTS, Lab, missing_tools
from whodid.tracer import Identity, Person, Query, Store, Tracer

from kit import LocalAgent, free_port
from test_agent_live import REASON

MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(REASON or MISSING), reason=f"{REASON or 'missing ' + ', '.join(MISSING)}")

ROUNDS, AT_ONCE = 6, ("jim", "bob", "jim", "bob")
MARK = f"whodid-logins-{os.getpid()}"


def play(ssh_as) -> list[dict]:
    """ROUNDS times, four ssh sessions started together; what each was and what it printed."""
    sessions = []
    for r in range(ROUNDS):
        batch = []
        for n, key in enumerate(AT_ONCE):
            mark = f"{MARK}-{r}-{n}"
            batch.append(dict(key=key, mark=mark, proc=ssh_as(key, f"echo client $SSH_CLIENT; /bin/echo {mark}")))
        for s in batch:
            out, _ = s.pop("proc").communicate(timeout=90)
            s["out"] = out
            # the client's port, as sshd told the session (root's shell start-up may print more)
            port = re.search(r"^client \S+ (\d+) \d+$", out, re.M)
            s["port"] = int(port[1]) if port else None
        sessions += batch
    return sessions


# syslog for one sshd: in a mount namespace of its own, /dev is a copy with a /dev/log that writes
# each message to a file as auth.log has it ("Nov 30 15:24:17 sshd[1085]: Accepted ...")
SYSLOGGED = """set -e
mkdir -p "$W/dev" && mount --rbind /dev "$W/dev" && mount -t tmpfs -o mode=755 tmpfs /dev
for n in null zero urandom random tty full ptmx; do touch /dev/$n; mount --bind "$W/dev/$n" /dev/$n; done
for d in pts shm; do mkdir /dev/$d; mount --rbind "$W/dev/$d" /dev/$d; done
python3 -c '
import os, re, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
open(sys.argv[2], "w").write(str(os.getpid()))
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(re.sub(r"^<[0-9]+>", "", s.recv(65536).decode("utf-8", "replace")).rstrip("\\n") + "\\n")
' "$W/sshd.log" "$W/syslog.pid" &
while [ ! -s "$W/syslog.pid" ]; do sleep 0.1; done
exec /usr/sbin/sshd -D -f "$W/sshd_config"
"""


@pytest.fixture(scope="module", params=["lab", "host", "host-syslog", "host-late"])
def played(request, tmp_path_factory):
    work = tmp_path_factory.mktemp("logins")
    db = work / "logins.db"
    if request.param == "lab":
        with Lab(db) as lab:
            sessions = play(lambda key, cmd: lab.ssh_from_laptop(key, f"ec2-user@{B}", cmd, background=True))
            time.sleep(1.5)                                   # the agents' last flush and log lines
            logs = lab.stop_hosts()
            return dict(sessions=sessions, keys=dict(lab.keys), db=db, host="host-b", raddr=LAPTOP,
                        err=logs["b"])
    # this machine: root's own sshd on a loopback port, jim's and bob's keys for root
    keys = {}
    for name in ("host", "jim", "bob"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(work / name)], check=True)
        keys[name] = subprocess.run(["ssh-keygen", "-lf", str(work / f"{name}.pub")], capture_output=True,
                                    text=True, check=True).stdout.split()[1]
    (work / "authorized_keys").write_text((work / "jim.pub").read_text() + (work / "bob.pub").read_text())
    port, log = free_port(), work / "sshd.log"
    read = work / "auth.log" if request.param == "host-late" else log     # what the agent follows
    read.touch()
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host\nAuthorizedKeysFile {work}/authorized_keys\n"
        f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM yes\nStrictModes no\n"
        f"PidFile {work}/sshd.pid\nMaxStartups 100\n")
    os.makedirs("/run/sshd", exist_ok=True)
    if request.param == "host-syslog":
        sshd = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", SYSLOGGED],
                                env=dict(os.environ, W=str(work)))
    else:
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(work / "sshd_config"), "-E", str(log)])

    def ssh_as(key, cmd):
        return subprocess.Popen(["ssh", "-i", str(work / key), "-p", str(port), *SSH_OPTS, "root@127.0.0.1", cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ssh = os.path.realpath(shutil.which("ssh"))
        with LocalAgent(db, work / "ready", "--auth-log", str(read), "--exclude", ssh) as agent:
            for _ in range(50):                               # the listener is up
                if (work / "sshd.pid").exists():
                    break
                time.sleep(0.1)
            sessions = play(ssh_as)
            if read != log:
                time.sleep(1.0)                               # every session's processes gone
                read.write_text(log.read_text())
            time.sleep(1.5)
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        if (work / "syslog.pid").exists():
            os.kill(int((work / "syslog.pid").read_text()), signal.SIGTERM)
    if request.param == "host-syslog":
        assert "sshd[" in log.read_text(), log.read_text()       # the lines carry sshd's pid
    return dict(sessions=sessions, keys=keys, db=db, host="live", raddr="127.0.0.1", err=agent.err)


def chain_logins(store: Store, mark: str) -> list[dict]:
    """The logins on the process chain of the command printing mark: its process and each parent."""
    (proc,) = store.db.execute("SELECT proc FROM execs WHERE cmd = ?", (f"/bin/echo {mark}",)).fetchone()
    found = []
    while proc is not None:
        found += [dict(zip(("pid", "start", "rport", "key_fp"), row)) for row in store.db.execute(
            "SELECT p.pid, p.start, l.rport, l.key_fp FROM logins l JOIN procs p ON p.id = l.proc WHERE l.proc = ?",
            (proc,))]
        (proc,) = store.db.execute("SELECT parent FROM procs WHERE id = ?", (proc,)).fetchone()
    return found


def test_every_session_ran(played):
    for s in played["sessions"]:
        assert s["mark"] in s["out"] and s["port"], s
    assert "0 logins not tied to a process" in played["err"], played["err"]


def test_each_login_names_its_own_connections_sshd(played):
    store = Store.open(played["db"])
    joined = {}
    for s in played["sessions"]:
        logins = chain_logins(store, s["mark"])
        # exactly one login above the session's command: its own, by client port and key
        assert [(x["rport"], x["key_fp"]) for x in logins] == [(s["port"], played["keys"][s["key"]])], (s, logins)
        joined[(logins[0]["pid"], logins[0]["start"])] = s["port"]
    assert len(joined) == len(played["sessions"])             # each to its own sshd process (pid, start)
    rows = store.db.execute(
        "SELECT p.pid, p.start, count(*) FROM logins l JOIN procs p ON p.id = l.proc JOIN boots b ON b.id = p.boot "
        "JOIN hosts h ON h.id = b.host WHERE h.name = ? AND l.raddr = ? GROUP BY l.proc HAVING count(*) > 1",
        (played["host"], played["raddr"])).fetchall()
    assert rows == []                                         # no sshd process with two logins


def test_each_command_is_traced_to_whose_key_logged_in(played):
    keys = played["keys"]
    tracer = Tracer(Store.open(played["db"]), Identity(people=(
        Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],)))))
    for s in played["sessions"]:
        (tr,) = [t for t in tracer.find(Query(pattern=s["mark"], limit=5)) if t.poi.program == "echo"]
        assert (tr.attributed.user, tr.attributed.confidence) == (s["key"], "observed"), (s, tr.attributed)
