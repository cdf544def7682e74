"""The agent's pure parts: record decoding and the process table, on fixtures (redaction: test_redact.py)."""

import os
import socket
import stat

import pytest

from whodid.agent import decode as d
from whodid.agent.assemble import Assembler, ProcState, kernel_prefixes, setid_bits, watched, with_setid
from whodid.agent.procfs import ProcInfo, tty_name
from whodid.tracer import parse_event

BOOT_EPOCH = 1_700_000_000.0


def hdr(type_, pid, ts_ns=1_000_000_000, uid=0, gid=0, aux=0, tid=None, gpid=None):
    return d.HDR.pack(ts_ns, pid, tid or pid, uid, gid, type_, aux, gpid or pid, 0)


def args_rec(pid, argv, truncated=0, **kw):
    blob = b"".join(a.encode() + b"\0" for a in argv)
    return hdr(d.EV_EXEC_ARGS, pid, **kw) + d.ARGS_HEAD.pack(len(argv), truncated, 0, len(blob)) + blob


def exec_rec(pid, filename, comm=None, **kw):
    return hdr(d.EV_EXEC, pid, **kw) + d.EXEC_TAIL.pack((comm or os.path.basename(filename)).encode(),
                                                        filename.encode())


def sock_rec(type_, pid, laddr, lport, raddr, rport, family=socket.AF_INET, **kw):
    pack = (lambda a: socket.inet_pton(family, a).ljust(16, b"\0")) if laddr else (lambda a: b"\0" * 16)
    return hdr(type_, pid, **kw) + d.SOCK_TAIL.pack(family, lport, rport, 0, pack(laddr),
                                                    socket.inet_pton(family, raddr).ljust(16, b"\0"))


def file_rec(pid, op, path, path2="", relative=False, mode=0, owner=0xFFFFFFFF, group=0xFFFFFFFF, **kw):
    return hdr(d.EV_FILE, pid, **kw) + d.FILE_TAIL.pack(op, relative, mode, owner, group, 0, path.encode(),
                                                         path2.encode())


# --- decoding -------------------------------------------------------------------------------

def test_decode_each_record_type():
    rec = d.decode(args_rec(10, ["ls", "-la", ""]))
    assert (rec.hdr.pid, rec.argv, rec.truncated) == (10, ["ls", "-la", ""], False)
    rec = d.decode(exec_rec(10, "/usr/bin/ls"))
    assert (rec.comm, rec.filename) == ("ls", "/usr/bin/ls")
    assert d.decode(hdr(d.EV_FORK, 10, aux=11)).child == 11
    assert d.decode(hdr(d.EV_EXIT, 10) + d.EXIT_TAIL.pack(3, 1)).code == 3
    assert d.decode(hdr(d.EV_EXIT, 10) + d.EXIT_TAIL.pack(0, 0)).code is None
    rec = d.decode(hdr(d.EV_CRED, 10) + d.CRED_TAIL.pack(3, 0, 0xFFFFFFFF, 5))
    assert (rec.call, rec.ids) == ("setresuid", (0, None, 5))
    rec = d.decode(sock_rec(d.EV_CONNECT, 10, "10.0.0.1", 40000, "10.0.0.2", 22))
    assert (rec.laddr, rec.lport, rec.raddr, rec.rport) == ("10.0.0.1", 40000, "10.0.0.2", 22)
    rec = d.decode(sock_rec(d.EV_CONNECT, 10, "::ffff:10.0.0.1", 1, "2001:db8::2", 22, family=socket.AF_INET6))
    assert (rec.laddr, rec.raddr) == ("10.0.0.1", "2001:db8::2")
    rec = d.decode(sock_rec(d.EV_ACCEPT, 10, None, 0, "10.0.0.3", 51000))
    assert (rec.laddr, rec.raddr, rec.rport) == (None, "10.0.0.3", 51000)
    rec = d.decode(file_rec(10, 3, "/etc/a.tmp", "/etc/a"))
    assert (rec.op, rec.path, rec.path2, rec.mode, rec.owner) == ("rename", "/etc/a.tmp", "/etc/a", None, None)
    rec = d.decode(file_rec(10, 7, "/etc/a", owner=33, group=0xFFFFFFFF))
    assert (rec.op, rec.owner, rec.group) == ("chown", 33, None)


def test_decode_refuses_short_and_unknown_records():
    with pytest.raises(d.DecodeError, match="shorter than its header"):
        d.decode(b"\x01\x02")
    with pytest.raises(d.DecodeError, match="truncated"):
        d.decode(hdr(d.EV_EXEC, 1) + b"abc")
    with pytest.raises(d.DecodeError, match="unknown record type 42"):
        d.decode(hdr(42, 1))


def test_argv_beyond_the_recorded_count_is_not_invented():
    raw = args_rec(1, ["a", "b"], truncated=True)
    assert d.decode(raw).argv == ["a", "b"] and d.decode(raw).truncated


# --- the process table ----------------------------------------------------------------------

class FakeProc:
    """/proc as a dict: processes that are alive, and nothing else."""

    def __init__(self, procs=()):
        self.procs = {p.pid: p for p in procs}

    def pids(self):
        return sorted(self.procs)

    def info(self, pid):
        return self.procs.get(pid)

    def ids(self, pid):
        p = self.procs.get(pid)
        return (p.uid, p.euid, p.gid, p.egid) if p else None

    def login(self, pid):
        p = self.procs.get(pid)
        return (p.auid, p.ses) if p else (None, None)

    def cwd(self, pid):
        p = self.procs.get(pid)
        return p.cwd if p else None

    def cmdline(self, pid):
        p = self.procs.get(pid)
        return p.argv if p else None

    def comm(self, pid):
        p = self.procs.get(pid)
        return p.comm if p else None

    def status(self, pid):
        p = self.procs.get(pid)
        return (p.comm, p.uid, p.euid, p.gid, p.egid) if p else None

    def namespace(self, pid):
        return (4026531836, None) if pid in self.procs else (None, None)

    def tty(self, pid):
        p = self.procs.get(pid)
        return p.tty if p else None


def shell(pid=100, uid=1000, auid=1000, ses=5):
    return ProcInfo(pid=pid, ppid=1, start_ticks=500, argv=["-bash"], exe="/usr/bin/bash", cwd="/home/jim",
                    uid=uid, euid=uid, gid=uid, egid=uid, auid=auid, ses=ses, tty="pts/1", comm="bash")


NAMES = {0: "root", 1000: "jim", 33: "www-data"}


def assembler(procs=(), watch=("/etc",)):
    return Assembler("web-01", "boot-1", BOOT_EPOCH, FakeProc(procs), NAMES.get, lambda g: None, watch=watch)


def feed(asm, *raws):
    out = []
    for raw in raws:
        out += asm.feed(d.decode(raw))
    for ev in out:
        parse_event(ev)          # every event the agent makes is valid schema v1
    return out



def test_an_exec_whose_exit_is_in_the_same_batch_is_not_looked_up_in_proc():
    # pid 200 in /proc is by now another process (pid reused) that happens to run ls in /tmp
    reused = ProcInfo(pid=200, ppid=1, start_ticks=900, argv=["ls"], exe="/usr/bin/ls", cwd="/tmp", uid=1000,
                      euid=1000, gid=1000, egid=1000, auid=1000, ses=5, tty="pts/1", comm="ls")
    records = [hdr(d.EV_FORK, 100, ts_ns=2_000_000_000, aux=200),
               exec_rec(200, "/usr/bin/ls", ts_ns=2_000_200_000, uid=1000, gid=1000),
               hdr(d.EV_EXIT, 200, ts_ns=2_500_000_000) + d.EXIT_TAIL.pack(0, 1)]

    def exec_cwd(batch):
        asm = assembler([shell(), reused])
        asm.snapshot()
        return [e["cwd"] for e in asm.feed_all([d.decode(r) for r in batch]) if e["kind"] == "exec"]

    assert exec_cwd(records) == ["/home/jim"]         # inherited, not the other process's
    assert exec_cwd(records[:2]) == ["/tmp"]          # no exit seen: /proc is asked

def test_snapshot_then_fork_exec_exit_of_a_short_lived_process():
    asm = assembler([shell()])
    snap = asm.snapshot()
    assert snap[0]["snapshot"] and snap[0]["argv"] == ["-bash"] and snap[0]["auser"] == "jim"
    shell_start = snap[0]["start"]
    events = feed(asm,
                  hdr(d.EV_FORK, 100, ts_ns=2_000_000_000, aux=200),
                  args_rec(200, ["ls", "-la"], ts_ns=2_000_100_000, uid=1000, gid=1000),
                  exec_rec(200, "/usr/bin/ls", ts_ns=2_000_200_000, uid=1000, gid=1000),
                  hdr(d.EV_EXIT, 200, ts_ns=2_500_000_000) + d.EXIT_TAIL.pack(2, 1))
    fork, exe, exit_ = events
    assert fork == {"v": 1, "kind": "fork", "host": "web-01", "boot": "boot-1", "ts": BOOT_EPOCH + 2.0,
                    "pid": 200, "start": 2_000_000_000, "ppid": 100, "pstart": shell_start}
    # gone before /proc could be read: login uid, session, cwd and tty are inherited
    assert exe["argv"] == ["ls", "-la"] and exe["start"] == 2_000_000_000
    assert (exe["auid"], exe["ses"], exe["cwd"], exe["tty"], exe["user"]) == (1000, 5, "/home/jim", "pts/1", "jim")
    assert exit_["code"] == 2 and exit_["start"] == 2_000_000_000
    assert 200 not in asm.procs


def test_failed_exec_attempts_leave_only_the_last_argv():
    asm = assembler([shell()])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=201),
                  args_rec(201, ["/usr/local/bin/x"], uid=1000), args_rec(201, ["/usr/bin/x", "--flag"], uid=1000),
                  exec_rec(201, "/usr/bin/x", uid=1000))
    assert [e["argv"] for e in events if e["kind"] == "exec"] == [["/usr/bin/x", "--flag"]]


def test_setuid_binary_exec_raises_euid_and_emits_a_cred_change(tmp_path):
    binary = tmp_path / "sudo"
    binary.write_text("#!/bin/true\n")
    os.chown(binary, 0, 0)           # before chmod: chown clears the setuid bit
    os.chmod(binary, 0o4755)
    asm = assembler([shell()])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=300),
                  args_rec(300, ["sudo", "-i"], uid=1000, gid=1000),
                  exec_rec(300, str(binary), uid=1000, gid=1000),
                  hdr(d.EV_CRED, 300, uid=1000) + d.CRED_TAIL.pack(3, 0, 0, 0))
    exe = next(e for e in events if e["kind"] == "exec")
    assert (exe["uid"], exe["euid"], exe["euser"]) == (1000, 0, "root")
    creds = [e for e in events if e["kind"] == "cred"]
    assert [(c["via"], c["old_uid"], c["old_euid"], c["uid"], c["euid"]) for c in creds] == [
        ("exec", 1000, 1000, 1000, 0), ("setresuid", 1000, 0, 0, 0)]


def test_a_binary_losing_its_setuid_bit_is_seen_within_a_second(tmp_path):
    binary = tmp_path / "tool"
    binary.write_text("#!/bin/true\n")
    os.chown(binary, 0, 0)
    os.chmod(binary, 0o4755)
    asm = assembler([shell()])
    asm.snapshot()

    def euid_at(pid, ts_ns):
        events = feed(asm, hdr(d.EV_FORK, 100, aux=pid, ts_ns=ts_ns),
                      exec_rec(pid, str(binary), uid=1000, gid=1000, ts_ns=ts_ns))
        return next(e for e in events if e["kind"] == "exec")["euid"]

    assert euid_at(301, 1_000_000_000) == 0
    os.chmod(binary, 0o755)
    assert euid_at(302, 1_500_000_000) == 0          # remembered for a second of record time
    assert euid_at(303, 2_100_000_000) == 1000


@pytest.mark.parametrize("call, ids, start, expected", [
    (1, (33, 0xFFFFFFFF, 0xFFFFFFFF), (0, 0), (33, 33)),        # root's setuid sets all
    (1, (0, 0xFFFFFFFF, 0xFFFFFFFF), (1000, 0), (0, 0)),        # euid 0: privileged, sets all
    (2, (0xFFFFFFFF, 33, 0xFFFFFFFF), (0, 0), (0, 33)),         # setreuid(-1, 33)
    (6, (33, 33, 33), (0, 0), (0, 0)),                          # setresgid leaves the uids alone
])
def test_setuid_family_semantics(call, ids, start, expected):
    asm = assembler()
    asm.procs[10] = ProcState(start=1, uid=start[0], euid=start[1])
    (ev,) = feed(asm, hdr(d.EV_CRED, 10) + d.CRED_TAIL.pack(call, *ids))
    assert (ev["uid"], ev["euid"]) == expected


def test_accept_takes_its_local_address_from_the_passive_open():
    asm = assembler([shell(pid=50, uid=0, auid=None, ses=None)])
    asm.snapshot()
    events = feed(asm, sock_rec(d.EV_PASSIVE, 0, "10.0.1.20", 22, "10.0.0.10", 51234),
                  sock_rec(d.EV_ACCEPT, 50, None, 0, "10.0.0.10", 51234),
                  sock_rec(d.EV_ACCEPT, 50, None, 0, "10.0.0.99", 1))         # no passive open seen
    (acc,) = events
    assert (acc["kind"], acc["laddr"], acc["lport"], acc["raddr"], acc["rport"]) == (
        "accept", "10.0.1.20", 22, "10.0.0.10", 51234)
    assert asm.counts["unmatched_accept"] == 1


def test_file_changes_resolve_relative_paths_and_apply_full_globs():
    asm = assembler([shell(100)], watch=("/etc", "/opt/*/conf"))
    asm.snapshot()
    asm.procfs.procs[100].cwd = "/etc/nginx"
    events = feed(asm, file_rec(100, 1, "nginx.conf", relative=True, mode=0o644),
                  file_rec(100, 1, "/opt/app/conf/x.yml"), file_rec(100, 1, "/opt/app/data/x"),
                  file_rec(100, 3, "/tmp/new", "/etc/hosts"))
    assert [(e["op"], e["path"], e.get("path2")) for e in events] == [
        ("write", "/etc/nginx/nginx.conf", None), ("write", "/opt/app/conf/x.yml", None),
        ("rename", "/tmp/new", "/etc/hosts")]
    assert events[0]["mode"] == 0o644 and events[0]["euser"] == "jim"


def test_kernel_prefixes_and_user_space_globs():
    assert kernel_prefixes(("/etc", "/opt/*/conf", "/var/spool/cron/")) == ["/etc/", "/opt/", "/var/spool/cron/"]
    assert watched("/etc/x", ("/etc",)) and not watched("/etcetera", ("/etc",))
    assert watched("/opt/a/conf/b", ("/opt/*/conf",)) and not watched("/opt/a/data/b", ("/opt/*/conf",))


@pytest.mark.parametrize("nr, name", [(0, None), ((136 << 8) | 3, "pts/3"), ((4 << 8) | 1, "tty1"),
                                      ((4 << 8) | 64, "ttyS0")])
def test_tty_names(nr, name):
    assert tty_name(nr) == name


def test_own_records_are_dropped():
    asm = Assembler("h", "b", 0.0, FakeProc(), NAMES.get, lambda g: None, own_pid=77)
    assert asm.feed(d.decode(args_rec(77, ["whodid-agent"]))) == []
    assert asm.feed(d.decode(exec_rec(77, "/usr/bin/python3"))) == []


def test_setuid_helper_reads_the_mode(tmp_path):
    f = tmp_path / "plain"
    f.write_text("")
    os.chmod(f, stat.S_IRWXU)
    assert with_setid(setid_bits(str(f)), 1000, 1000) == (1000, 1000)
    assert with_setid(setid_bits("/nonexistent"), 5, 6) == (5, 6)


def test_fleet_mode_without_a_token_says_where_to_get_one(capsys, monkeypatch, tmp_path):
    from whodid.agent.cli import main
    monkeypatch.delenv("WHODID_AGENT_TOKEN", raising=False)
    monkeypatch.setenv("WHODID_CONFIG", "/dev/null")
    assert main(["forward", "--collector", "http://127.0.0.1:9", "--spool", str(tmp_path / "s.db"), "x"]) == 2
    assert "fleet mode needs this host's token" in capsys.readouterr().err
    assert main(["forward", "x"]) == 2
    assert "forward needs --collector URL" in capsys.readouterr().err


def test_agent_command_says_where_events_must_go(capsys):
    from whodid.agent.cli import main
    assert main(["run"]) == 2
    assert "say where events go: --collector URL (fleet mode), --db PATH" in capsys.readouterr().err


def test_in_a_pid_namespace_forks_wait_for_the_childs_own_pid():
    # The fork record names the child by its pid outside the namespace (7001); the child's
    # first record, from inside, says it is pid 12 there.
    asm = Assembler("host-b", "b", BOOT_EPOCH, FakeProc([shell(pid=5)]), NAMES.get, lambda g: None,
                    pid_namespace=True)
    asm.snapshot()
    assert feed(asm, hdr(d.EV_FORK, 5, ts_ns=3_000_000_000, aux=7001, gpid=6005)) == []
    events = feed(asm, args_rec(12, ["id"], gpid=7001, uid=1000), exec_rec(12, "/usr/bin/id", gpid=7001, uid=1000))
    fork, exe = events
    assert (fork["kind"], fork["pid"], fork["ppid"], fork["start"]) == ("fork", 12, 5, 3_000_000_000)
    assert (exe["pid"], exe["start"], exe["argv"]) == (12, 3_000_000_000, ["id"])


def test_in_a_pid_namespace_a_child_whose_parent_exited_first_keeps_its_fork_ancestry():
    # A double fork: the shell (5) forks 6, 6 forks the daemon and exits before the daemon's
    # first record. The daemon's parent is 6 as it was at the fork - not a stand-in with no
    # history named when the daemon first showed up - and it inherits 6's login session.
    asm = Assembler("host-b", "b", BOOT_EPOCH, FakeProc([shell(pid=5)]), NAMES.get, lambda g: None,
                    pid_namespace=True)
    asm.snapshot()
    feed(asm, hdr(d.EV_FORK, 5, ts_ns=3_000_000_000, aux=7001, gpid=6005))
    (middle,) = feed(asm, hdr(d.EV_FORK, 6, ts_ns=3_100_000_000, aux=7002, gpid=7001))
    feed(asm, hdr(d.EV_EXIT, 6, ts_ns=3_200_000_000, gpid=7001) + d.EXIT_TAIL.pack(0, 1))
    fork, exe = feed(asm, args_rec(9, ["daemon"], gpid=7002, uid=1000),
                     exec_rec(9, "/usr/sbin/daemon", gpid=7002, uid=1000))
    assert (middle["pid"], middle["ppid"], middle["start"]) == (6, 5, 3_000_000_000)
    assert (fork["pid"], fork["ppid"], fork["pstart"], fork["start"]) == (9, 6, 3_000_000_000, 3_100_000_000)
    assert (exe["ppid"], exe["pstart"], exe["auid"], exe["ses"]) == (6, 3_000_000_000, 1000, 5)


def test_argv_the_kernel_could_not_read_comes_from_proc_when_it_agrees():
    # sshd's child execs `bash -c CMD` with "-c" in a .rodata page it never touched: the
    # kernel read only "bash". The shell is still alive, and /proc has the whole of it.
    live = ProcInfo(pid=400, ppid=100, start_ticks=900, argv=["bash", "-c", "echo hi"], exe="/usr/bin/bash",
                    cwd="/root", uid=0, euid=0, gid=0, egid=0, auid=0, ses=3, tty=None, comm="bash")
    asm = assembler([shell(), live])
    asm.procs[400] = ProcState(start=5)
    (ev,) = feed(asm, args_rec(400, ["bash"], truncated=d.TRUNC_FAULT), exec_rec(400, "/usr/bin/bash"))
    assert ev["argv"] == ["bash", "-c", "echo hi"] and "truncated" not in ev
    # gone already, or /proc disagrees: keep what was read, and say it is incomplete
    asm.procs[401] = ProcState(start=6)
    (ev,) = feed(asm, args_rec(401, ["ls"], truncated=d.TRUNC_FAULT), exec_rec(401, "/usr/bin/ls"))
    assert ev["argv"] == ["ls"] and ev["truncated"] is True
    assert asm.counts["argv_unread"] == 1


def test_netlink_messages_parse_into_events_of_the_same_schema():
    from whodid.agent import netlink as nl

    def msg(what, ts, *fields):
        body = nl.CN_MSG.pack(1, 1, 0, 0, 24, 0) + nl.EVENT_HEAD.pack(what, 0, ts) + nl.FOUR.pack(*fields)
        return nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(body), 3, 0, 0, 0) + body

    data = (msg(nl.PROC_EVENT_FORK, 10, 100, 100, 300, 300) + msg(nl.PROC_EVENT_FORK, 11, 300, 300, 301, 300)
            + msg(nl.PROC_EVENT_UID, 12, 300, 300, 33, 33) + msg(nl.PROC_EVENT_EXIT, 13, 300, 300, 5 << 8, 17))
    parsed = nl.parse_message(data)
    assert [p[0] for p in parsed] == [nl.PROC_EVENT_FORK, nl.PROC_EVENT_FORK, nl.PROC_EVENT_UID, nl.PROC_EVENT_EXIT]
    cap = nl.NetlinkCapture.__new__(nl.NetlinkCapture)      # no socket: only the translation
    cap.assembler = assembler([shell()])
    cap.assembler.snapshot()
    events = [e for what, ts, f in parsed for r in cap._records(what, ts, f) for e in cap.assembler.feed(r)]
    for ev in events:
        parse_event(ev)
    assert [(e["kind"], e["pid"]) for e in events] == [("fork", 300), ("cred", 300), ("exit", 300)]  # no thread
    assert (events[1]["uid"], events[2]["code"]) == (33, 5)


def test_a_login_line_read_after_the_session_ended_still_names_its_process():
    from whodid.agent.sshd_log import parse_accepted
    listener = ProcInfo(pid=6, ppid=1, start_ticks=100, argv=["sshd", "-D"], exe="/usr/sbin/sshd", cwd="/",
                        uid=0, euid=0, gid=0, egid=0, auid=None, ses=None, tty=None, comm="sshd")
    asm = assembler([listener])
    asm.snapshot()
    feed(asm, sock_rec(d.EV_PASSIVE, 0, "10.77.0.2", 22, "10.77.0.1", 48416, ts_ns=1_000),
         sock_rec(d.EV_ACCEPT, 6, None, 0, "10.77.0.1", 48416, ts_ns=2_000),
         hdr(d.EV_FORK, 6, ts_ns=3_000, aux=121),
         hdr(d.EV_EXIT, 121, ts_ns=9_000) + d.EXIT_TAIL.pack(0, 1))           # a short session, over
    acc = parse_accepted("Accepted publickey for ec2-user from 10.77.0.1 port 48416 ssh2: ED25519 SHA256:abc")
    asm.add_login(BOOT_EPOCH + 1, acc)
    (login,) = asm.match_logins(BOOT_EPOCH + 1)
    assert (login["pid"], login["start"], login["laddr"], login["key_fp"]) == (121, 3_000, "10.77.0.2", "SHA256:abc")
    parse_event(login)
    # a line no process can be found for is counted at shutdown, not dropped in silence
    asm.add_login(BOOT_EPOCH + 2, acc._replace(port=1))
    assert asm.match_logins(BOOT_EPOCH + 2) == [] and asm.counts["unmatched_login"] == 0
    assert asm.match_logins(BOOT_EPOCH + 2, give_up_after=0) == [] and asm.counts["unmatched_login"] == 1


def sshd_listener(pid=6, ppid=1):
    return ProcInfo(pid=pid, ppid=ppid, start_ticks=100, argv=["sshd", "-D"], exe="/usr/sbin/sshd", cwd="/",
                    uid=0, euid=0, gid=0, egid=0, auid=None, ses=None, tty=None, comm="sshd")


def accepted_line(port, pid=None):
    from whodid.agent.sshd_log import parse_accepted
    where = f"Nov 30 15:19:08 host-b sshd[{pid}]: " if pid else ""       # `sshd -E FILE` writes no pid
    return parse_accepted(f"{where}Accepted publickey for ec2-user from 10.77.1.2 port {port} ssh2: "
                          f"ED25519 SHA256:k{port}")


def connection(listener, port, ts_ns, **kw):
    """A client's connection reaching sshd's listener: the handshake, then its accept()."""
    return (sock_rec(d.EV_PASSIVE, 0, "10.77.0.2", 22, "10.77.1.2", port, ts_ns=ts_ns - 100),
            sock_rec(d.EV_ACCEPT, listener, None, 0, "10.77.1.2", port, ts_ns=ts_ns, **kw))


def test_two_logins_at_once_in_a_pid_namespace_each_name_their_own_sshd():
    # Seen in the lab: jim and bob log in from the laptop at the same instant. The listener
    # accepts 55320 and forks (outside pid 7041), then accepts 55330 and forks (7042). In a pid
    # namespace a child is known by its own pid at its first record, and 7042's (pid 42) came
    # first: both logins were joined to pid 42, the first fork seen after either accept.
    asm = Assembler("host-b", "b", BOOT_EPOCH, FakeProc([sshd_listener()]), NAMES.get, lambda g: None,
                    pid_namespace=True)
    asm.snapshot()
    feed(asm, *connection(6, 55320, 1_000, gpid=6006), hdr(d.EV_FORK, 6, ts_ns=1_100, aux=7041, gpid=6006),
         *connection(6, 55330, 2_000, gpid=6006), hdr(d.EV_FORK, 6, ts_ns=2_100, aux=7042, gpid=6006))
    feed(asm, exec_rec(42, "/usr/sbin/sshd", ts_ns=2_200, gpid=7042))              # sshd -R, re-executed
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55320))
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55330))
    (bobs,) = asm.match_logins(BOOT_EPOCH + 1)
    assert (bobs["rport"], bobs["pid"], bobs["start"]) == (55330, 42, 2_100)
    # jim's child has not shown its own pid yet: his login waits for it, not joined to pid 42
    feed(asm, exec_rec(41, "/usr/sbin/sshd", ts_ns=2_300, gpid=7041))
    (jims,) = asm.match_logins(BOOT_EPOCH + 1)
    assert (jims["rport"], jims["pid"], jims["start"]) == (55320, 41, 1_100)
    assert asm.counts["unmatched_login"] == 0


def test_a_login_whose_fork_is_ambiguous_is_left_unmatched_not_given_another_connections_sshd():
    # The accept of a second client was lost (or never recorded): the listener forked twice
    # after the first accept, and which child serves it cannot be told. Counted, not guessed.
    asm = assembler([sshd_listener()])
    asm.snapshot()
    feed(asm, *connection(6, 55320, 1_000), hdr(d.EV_FORK, 6, ts_ns=1_100, aux=41),
         hdr(d.EV_FORK, 6, ts_ns=2_100, aux=42))
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55320))
    assert asm.match_logins(BOOT_EPOCH + 1, give_up_after=0) == []
    assert asm.counts["unmatched_login"] == 1
    # and a fork between an accept and the next is that accept's alone
    feed(asm, *connection(6, 55330, 3_000), hdr(d.EV_FORK, 6, ts_ns=3_100, aux=43),
         *connection(6, 55340, 4_000), hdr(d.EV_FORK, 6, ts_ns=4_100, aux=44))
    asm.add_login(BOOT_EPOCH + 2, accepted_line(55330))
    asm.add_login(BOOT_EPOCH + 2, accepted_line(55340))
    assert [(e["rport"], e["pid"]) for e in asm.match_logins(BOOT_EPOCH + 2)] == [(55330, 43), (55340, 44)]


def test_a_late_log_lines_pid_given_since_to_another_connections_sshd_is_not_trusted():
    # "sshd[121]: Accepted ... port 55320" is read after jim's session (pid 121) ended, and
    # sshd's next child, for bob's connection, got pid 121 again: the line's pid now names
    # bob's process. The accept of 55320 and the fork after it still name jim's.
    class Proc(FakeProc):
        def exe(self, pid):
            p = self.procs.get(pid)
            return p.exe if p else None

    procfs = Proc([sshd_listener()])
    asm = Assembler("web-01", "boot-1", BOOT_EPOCH, procfs, NAMES.get, lambda g: None)
    asm.snapshot()
    feed(asm, *connection(6, 55320, 1_000), hdr(d.EV_FORK, 6, ts_ns=1_100, aux=121),
         hdr(d.EV_EXIT, 121, ts_ns=1_500) + d.EXIT_TAIL.pack(0, 1),
         *connection(6, 55330, 2_000), hdr(d.EV_FORK, 6, ts_ns=2_100, aux=121))
    procfs.procs[121] = sshd_listener(121, ppid=6)                               # bob's, running
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55320, pid=121))
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55330, pid=121))
    jims, bobs = asm.match_logins(BOOT_EPOCH + 1)
    assert (jims["rport"], jims["pid"], jims["start"]) == (55320, 121, 1_100)
    assert (bobs["rport"], bobs["pid"], bobs["start"]) == (55330, 121, 2_100)


@pytest.mark.parametrize("line, expected", [
    ("Nov 23 10:00:00 jump sshd[812]: Accepted publickey for jim from 203.0.113.7 port 53122 ssh2: "
     "ED25519 SHA256:BgGuuwQsUSRWjwuvtcHvRaDMEn7bExlyncVV4SOkANU",
     ("jim", "publickey", "203.0.113.7", 53122, "ED25519", "SHA256:BgGuuwQsUSRWjwuvtcHvRaDMEn7bExlyncVV4SOkANU", 812)),
    ("Accepted password for bob from ::ffff:10.0.0.5 port 2222 ssh2",
     ("bob", "password", "::ffff:10.0.0.5", 2222, None, None, None)),
    ("sshd-session[99]: Accepted keyboard-interactive/pam for carol from 10.1.1.1 port 5 ssh2",
     ("carol", "keyboard-interactive", "10.1.1.1", 5, None, None, 99)),
    ("Failed password for root from 1.2.3.4 port 22 ssh2", None),
])
def test_sshd_accepted_lines(line, expected):
    from whodid.agent.sshd_log import parse_accepted
    got = parse_accepted(line)
    assert (tuple(got) if got else None) == expected


def test_log_follower_reads_new_complete_lines_and_survives_rotation(tmp_path):
    import time as _time
    from whodid.agent.sshd_log import LogFollower
    log = tmp_path / "auth.log"
    log.write_text("Accepted publickey for old from 1.1.1.1 port 1 ssh2\n")     # before we started: not ours
    f = LogFollower(str(log), poll=0.05).start()
    _time.sleep(0.2)
    with open(log, "a") as fh:
        fh.write("Accepted publickey for jim from 1.1.1.1 port 2 ss")           # half a line...
        fh.flush()
        _time.sleep(0.2)
        fh.write("h2\n")                                                          # ...and the rest
    _time.sleep(0.2)
    log.rename(tmp_path / "auth.log.1")                                           # rotation
    log.write_text("Accepted publickey for bob from 1.1.1.1 port 3 ssh2\n")
    _time.sleep(0.4)
    f.stop()
    users = []
    while not f.lines.empty():
        users.append(f.lines.get()[1].user)
    assert users == ["jim", "bob"]


def test_proc_is_not_believed_once_the_process_runs_another_program():
    # `bash -c 'sudo -i x'`: by the time the bash exec is handled, pid 500 is already sudo,
    # running as root, with sudo's arguments. None of that is bash's.
    now_sudo = ProcInfo(pid=500, ppid=100, start_ticks=900, argv=["sudo", "-i", "x"], exe="/usr/bin/sudo",
                        cwd="/home/ec2-user", uid=1000, euid=0, gid=1000, egid=0, auid=1000, ses=3, tty=None,
                        comm="sudo")
    asm = assembler([shell(), now_sudo])
    asm.procs[500] = ProcState(start=5, uid=1000, euid=1000, auid=1000, ses=3)
    (ev,) = feed(asm, args_rec(500, ["bash"], truncated=d.TRUNC_FAULT, uid=1000, gid=1000),
                 exec_rec(500, "/usr/bin/bash", comm="bash", uid=1000, gid=1000))
    assert (ev["argv"], ev["truncated"], ev["euid"], ev["euser"]) == (["bash"], True, 1000, "jim")


@pytest.mark.parametrize("cgroup, cid", [
    ("0::/system.slice/docker-" + "a" * 64 + ".scope\n", "a" * 12),
    ("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-" + "b" * 64 + ".scope\n", "b" * 12),
    ("12:pids:/docker/" + "c" * 64 + "\n", "c" * 12),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
])
def test_container_ids_from_cgroups(cgroup, cid):
    from whodid.agent.procfs import container_id
    assert container_id(cgroup) == cid


def test_configured_noise_is_left_out_with_everything_it_starts():
    asm = Assembler("h", "b", BOOT_EPOCH, FakeProc([shell()]), NAMES.get, lambda g: None,
                    exclude=("node_exporter",))
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=700), args_rec(700, ["node_exporter"]),
                  exec_rec(700, "/usr/bin/node_exporter"),
                  hdr(d.EV_FORK, 700, aux=701), args_rec(701, ["cat", "/proc/stat"]), exec_rec(701, "/usr/bin/cat"),
                  hdr(d.EV_EXIT, 701) + d.EXIT_TAIL.pack(0, 1),
                  hdr(d.EV_FORK, 100, aux=702), args_rec(702, ["ls"], uid=1000),
                  exec_rec(702, "/usr/bin/ls", uid=1000, gid=1000))
    assert [(e["kind"], e["pid"]) for e in events] == [("fork", 700), ("fork", 702), ("exec", 702)]
    assert 701 not in asm.excluded


def test_group_changes_carry_gids():
    asm = assembler()
    asm.procs[10] = ProcState(start=1, uid=0, euid=0, gid=0, egid=0)
    (ev,) = feed(asm, hdr(d.EV_CRED, 10) + d.CRED_TAIL.pack(6, 33, 33, 33))
    assert (ev["via"], ev["old_gid"], ev["gid"], ev["egid"], ev["uid"]) == ("setresgid", 0, 33, 33, 0)
    (ev,) = feed(asm, hdr(d.EV_CRED, 10) + d.CRED_TAIL.pack(4, 7, 0xFFFFFFFF, 0xFFFFFFFF))
    assert (ev["via"], ev["gid"], ev["egid"]) == ("setgid", 7, 7)              # euid 0: all of them


@pytest.mark.parametrize("prefix, path, expected", [
    ("/etc/", "/etc/hosts", True), ("/etc/", "/etcetera", False), ("/etc/", "/et", False),
    ("/usr/lib/systemd/system/", "/usr/lib/systemd/system/ssh.service", True),
    ("/usr/lib/systemd/system/", "/usr/lib/systemd/sys", False),
    ("/var/spool/cron/", "/var/spool/cron/crontabs/root", True), ("/opt/", "/optional", False),
])
def test_kernel_prefix_comparisons(prefix, path, expected):
    # The C the loader writes, evaluated over the same little-endian words the kernel reads
    from whodid.agent.capture import prefix_check
    raw = path.encode().ljust(24, b"\0")[:24]
    words = {f"w{i}": int.from_bytes(raw[i * 8:(i + 1) * 8], "little") for i in range(3)}
    expr = prefix_check(prefix).replace("ULL", "").replace("&&", "and")
    assert eval(expr, {}, words) is expected


def test_a_forked_child_inherits_every_fact_but_its_own_identity():
    from dataclasses import fields
    from whodid.agent.assemble import ProcState
    parent = ProcState(**{f.name: f"value of {f.name}" for f in fields(ProcState)})
    child = parent.child(start=99, ppid=7)
    for f in fields(ProcState):
        expected = {"start": 99, "ppid": 7, "pstart": "value of start"}.get(f.name, f"value of {f.name}")
        assert getattr(child, f.name) == expected, f.name


def test_event_lines_keep_what_orjson_refuses():
    import json
    from whodid.agent.spool import event_line
    ev = {"kind": "exec", "argv": ["cat", "caf\udce9"], "n": 2 ** 70, "name": "café"}
    assert json.loads(event_line(ev)) == ev                # non-UTF-8 argument, huge integer
    assert json.loads(event_line({"name": "café"})) == {"name": "café"}
    assert b"\n" not in event_line({"argv": ["a\nb"]})


# --- what the kernel says at exec (task_struct at BTF offsets: agent/btf.py) ---------------

def exec_facts(known, auid=0, ses=0, pidns=0):
    return d.EXEC_FACTS.pack(known, auid, ses, pidns)


def test_decode_reads_the_login_and_namespace_the_kernel_gave_and_only_those():
    rec = d.decode(exec_rec(10, "/usr/bin/ls") + exec_facts(d.KNOWN_LOGIN | d.KNOWN_PIDNS, 1000, 7, 4026532000))
    assert (rec.auid, rec.ses, rec.pidns) == (1000, 7, 4026532000)
    rec = d.decode(exec_rec(10, "/usr/bin/ls") + exec_facts(d.KNOWN_PIDNS, 1000, 7, 4026532000))
    assert (rec.auid, rec.ses, rec.pidns) == (None, None, 4026532000)      # no BTF offsets for loginuid
    rec = d.decode(exec_rec(10, "/usr/bin/ls") + exec_facts(0, 1000, 7, 4026532000))
    assert (rec.auid, rec.ses, rec.pidns) == (None, None, None)


def test_a_short_lived_process_keeps_the_session_the_kernel_gave_not_its_parents():
    # the shell is in session 5; its child wrote a new login uid (pam_loginuid does this in
    # su's or sshd's child), so the kernel gave it session 9 - and it is gone before /proc is read
    asm = assembler([shell()])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=200),
                  exec_rec(200, "/usr/bin/ls", uid=1000, gid=1000) + exec_facts(d.KNOWN_LOGIN, 33, 9))
    (exe,) = [e for e in events if e["kind"] == "exec"]
    assert (exe["auid"], exe["ses"], exe["auser"]) == (33, 9, "www-data")


def test_an_unset_login_uid_from_the_kernel_is_not_recorded():
    asm = assembler([shell(auid=4294967295, ses=4294967295)])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=200),
                  exec_rec(200, "/usr/bin/ls") + exec_facts(d.KNOWN_LOGIN, 4294967295, 4294967295))
    (exe,) = [e for e in events if e["kind"] == "exec"]
    assert "auid" not in exe and "ses" not in exe


def test_a_short_lived_process_in_a_nested_pid_namespace_keeps_its_own_namespace():
    asm = assembler([shell()])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=200),
                  exec_rec(200, "/usr/bin/true") + exec_facts(d.KNOWN_PIDNS, pidns=4026532999))
    (exe,) = [e for e in events if e["kind"] == "exec"]
    assert exe["pidns"] == 4026532999           # the shell's (from /proc) is 4026531836


def test_the_kernels_session_wins_over_proc_where_the_pid_may_be_another_process_by_now():
    # pid 200 in /proc is by now another process with the same name, in bob's session 5: the
    # image check (comm) cannot tell, but the exec record says what the kernel gave pid 200
    impostor = ProcInfo(pid=200, ppid=1, start_ticks=900, argv=["ls"], exe="/usr/bin/ls", cwd="/tmp", uid=1000,
                        euid=1000, gid=1000, egid=1000, auid=1000, ses=5, tty="pts/1", comm="ls")
    asm = assembler([shell(), impostor])
    asm.snapshot()
    events = feed(asm, hdr(d.EV_FORK, 100, aux=200),
                  exec_rec(200, "/usr/bin/ls", uid=1000, gid=1000) + exec_facts(d.KNOWN_LOGIN, 33, 9))
    (exe,) = [e for e in events if e["kind"] == "exec"]
    assert (exe["auid"], exe["ses"]) == (33, 9)


# --- the connection budget (capture.c): its counts as loss events -------------------------------

def test_connections_over_budget_become_loss_events_that_name_the_user():
    asm = assembler()
    first = asm.budget_losses({1000: 412_000, d.NO_PROCESS: 7, 77: 3, 0: 0}, 100.0, 101.0, 2000, 10_000)
    for ev in first:
        parse_event(ev)                     # schema-valid `loss` events
    by_what = {ev["what"]: ev for ev in first}
    assert [ev["count"] for ev in first] == [3, 412_000, 7]        # by uid; a uid with nothing dropped says nothing
    jim = by_what["connection records over the per-user budget of 2,000/s, burst 10,000: uid 1000 (jim), "
                  "412,000 not recorded"]
    assert (jim["host"], jim["boot"], jim["since"], jim["ts"]) == ("web-01", "boot-1", 100.0, 101.0)
    assert any("uid 77, 3 not recorded" in w for w in by_what)     # no name for it: the uid alone
    assert any("incoming TCP connections (no process known)" in w for w in by_what)
    # the kernel's counts are totals since load: only what is new is said again
    again = asm.budget_losses({1000: 412_500, d.NO_PROCESS: 7, 77: 3}, 101.0, 102.0, 2000, 10_000)
    assert [(ev["count"], ev["since"]) for ev in again] == [(500, 101.0)]
    assert asm.budget_losses({1000: 412_500}, 102.0, 103.0, 2000, 10_000) == []


def test_the_budget_keys_and_flags_match_capture_c():
    import re as _re

    from whodid.agent.capture import budget_flags, program_text
    src = program_text(())
    assert _re.search(rf"#define NO_PROCESS\s+0x{d.NO_PROCESS:x}\b", src)
    assert _re.search(rf"#define OVER_BUDGET_OTHER\s+0x{d.OVER_BUDGET_OTHER:x}\b", src)
    assert budget_flags(0, 10_000) == []                             # unlimited: the checks compile away
    # an empty bucket fills in burst/per_second seconds, rounded up
    assert budget_flags(3, 10) == ["-DBUDGET_PER_SECOND=3LL", "-DBUDGET_BURST=10LL",
                                   "-DBUDGET_FULL_NS=3333333334LL"]


def test_setuid_bits_are_read_on_the_hosts_filesystem_not_the_agents_private_tmp(tmp_path):
    """The agent unit's PrivateTmp= (and the DaemonSet's image root) is not the filesystem the
    host's programs exec from: a short-lived setuid binary under the host's /tmp, gone before
    /proc is read, must still be known setuid (adversarial review, issue 22). Run in a mount
    namespace where a tmpfs hides the binary, as PrivateTmp hides /tmp. The host's root is
    reached through /proc/PID/root: the agent uses pid 1's; here pid 1 is not ours to read, so
    this test's own process (outside the namespace) stands for it."""
    import subprocess
    import sys
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    f = hidden / "escalate"
    f.write_text("")
    os.chown(f, 0, 0)
    os.chmod(f, 0o4755)
    code = ("import sys; from whodid.agent.assemble import setid_bits, with_setid; "
            f"print(with_setid(setid_bits({str(f)!r}, '/proc/{os.getpid()}/root'), 1000, 1000))")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs none {hidden} && exec {sys.executable} -c {code!r}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(0, 1000)"


# --- the local-mode sink ----------------------------------------------------------------------

SECRET_ARGVS = [["mysql", "-uroot", "-phunter2", "db"], ["curl", "-H", "Authorization: Bearer abc.def.ghi", "x"],
                ["sh", "-c", "PGPASSWORD=s3cret psql -h db"], ["aws", "configure", "set", "aws_secret_access_key", "K"],
                ["env", "API_TOKEN=tok123", "run"], ["ls", "-la"]]


def test_local_mode_stores_what_ingest_with_redaction_stores(tmp_path):
    """The agent's store sink skips ingest's second redaction (agent/cli.py Sink): the assembler
    redacted with rules holding the defaults. Its store must hold exactly what a store given
    the same events through ingest's redaction holds - no secret, nothing masked differently."""
    from whodid.agent.cli import Sink
    from whodid.tracer import Store, ingest
    asm = assembler()
    events = []
    for i, argv in enumerate(SECRET_ARGVS):
        pid = 200 + i
        events += asm.feed(d.decode(hdr(d.EV_FORK, 100, aux=pid, ts_ns=1_000_000_000 + i)))
        events += feed(asm, args_rec(pid, argv, ts_ns=1_000_000_500 + i), exec_rec(pid, "/usr/bin/" + argv[0],
                                                                                  ts_ns=1_000_000_600 + i))
    assert sum(ev["kind"] == "exec" for ev in events) == len(SECRET_ARGVS)
    sink = Sink(str(tmp_path / "agent.db"), None)
    sink.write([dict(ev) for ev in events])
    sink.close()
    reference = Store.open(tmp_path / "ref.db", create=True)
    ingest(reference, [dict(ev) for ev in events])
    reference.close()

    def stored(path):
        import sqlite3
        with sqlite3.connect(path) as db:
            return db.execute("SELECT cmd, argv, truncated FROM execs ORDER BY ts").fetchall()

    got = stored(tmp_path / "agent.db")
    assert got == stored(tmp_path / "ref.db")
    assert len(got) == len(SECRET_ARGVS)
    text = repr(got)
    for secret in ("hunter2", "abc.def.ghi", "s3cret", "tok123"):
        assert secret not in text


# --- a connect is named by the process alive at its SYN_SENT ---------------------------------

def test_a_connect_recorded_after_its_process_exited_and_its_pid_was_reused_names_the_first():
    """The connect's header was made at SYN_SENT (aux: microseconds before the record). P1 (pid
    10) forks at 1 s, connects at 2 s and exits at 3 s; P2 gets pid 10 at 4 s; the connect is
    recorded at 5 s. It is P1's, by its start - not P2's, nor one made up."""
    s = 1_000_000_000
    asm = assembler()
    out = feed(asm, hdr(d.EV_FORK, 1, ts_ns=1 * s, aux=10), hdr(d.EV_EXIT, 10, ts_ns=3 * s) + d.EXIT_TAIL.pack(0, 1),
               hdr(d.EV_FORK, 1, ts_ns=4 * s, aux=10),
               sock_rec(d.EV_CONNECT, 10, "10.0.0.5", 40000, "10.0.0.9", 443, ts_ns=5 * s, aux=3_000_000))
    (connect,) = [e for e in out if e["kind"] == "connect"]
    p1_start = [e["start"] for e in out if e["kind"] == "exit" and e["pid"] == 10][0]
    assert connect["start"] == p1_start != asm.procs[10].start, connect


def test_a_connect_whose_process_is_gone_unseen_is_not_given_to_the_pids_new_process():
    """P1 was never seen; P2 holds pid 10 now, from 4 s. A connect made at 2 s cannot be P2's: it
    is named by the pid and its SYN's time alone, and P2 is left as it was."""
    s = 1_000_000_000
    asm = assembler()
    out = feed(asm, hdr(d.EV_FORK, 1, ts_ns=4 * s, aux=10),
               sock_rec(d.EV_CONNECT, 10, "10.0.0.5", 40000, "10.0.0.9", 443, ts_ns=5 * s, aux=3_000_000))
    (connect,) = [e for e in out if e["kind"] == "connect"]
    assert asm.procs[10].start == 4 * s
    assert connect["pid"] == 10 and connect["start"] == 2 * s


def test_ringbuf_pages_on_the_command_line_are_a_power_of_two_the_kernel_can_hold():
    from argparse import Namespace

    from whodid.agent.cli import bad_number
    assert bad_number(Namespace(ringbuf_pages=1 << 19)) is None
    for pages in (0, 3, 1 << 20):                   # 4 GiB does not fit the kernel's 32-bit size
        assert "--ringbuf-pages must be a power of 2 from 1 to 524288" in bad_number(Namespace(ringbuf_pages=pages))
