"""The audit importer on hand-made logs: one rule per test - hex and split arguments,
interleaved events, lost records, several nodes in one file, PID reuse, the sshd login
join, credential changes, garbage."""

from kit import store_with

from whodid.agent.audit import ImportReport, import_lines, parse_record, sockaddr
from whodid.tracer import Query, Tracer

T = 1_700_000_000


def rec(kind, serial, body, t=None, node=None, enriched=""):
    t = T + serial / 10 if t is None else t
    return (f"node={node} " if node else "") + f"type={kind} msg=audit({t:.3f}:{serial}): {body}" + (
        "\x1d" + enriched if enriched else "")


def syscall(serial, name, num, pid, ppid, uid=0, euid=None, auid=1001, ses=3, exit=0, success="yes", comm="x",
            exe="/bin/x", a0="0", node=None, t=None):
    euid = uid if euid is None else euid
    body = (f"arch=c000003e syscall={num} success={success} exit={exit} a0={a0} a1=0 a2=0 a3=0 items=1 ppid={ppid} "
            f"pid={pid} auid={auid} uid={uid} gid={uid} euid={euid} suid={euid} fsuid={euid} egid={uid} sgid={uid} "
            f"fsgid={uid} tty=pts0 ses={ses} comm=\"{comm}\" exe=\"{exe}\" key=\"whodid\"")
    names = {0: "root", 1001: "jim"}
    return rec("SYSCALL", serial, body, node=node, t=t,
               enriched=f'ARCH=x86_64 SYSCALL={name} AUID="{names.get(auid, auid)}" UID="{names.get(uid, uid)}" '
                        f'EUID="{names.get(euid, euid)}"')


def execve(serial, pid, ppid, args, uid=1001, euid=None, node=None, **kw):
    parts = " ".join(f'a{i}="{a}"' for i, a in enumerate(args))
    return [syscall(serial, "execve", 59, pid, ppid, uid=uid, euid=euid, comm=args[0], exe=f"/usr/bin/{args[0]}",
                    node=node, **kw),
            rec("EXECVE", serial, f"argc={len(args)} {parts}", node=node, t=kw.get("t")),      # one event, one time
            rec("CWD", serial, 'cwd="/home/jim"', node=node, t=kw.get("t"))]


def fork(serial, parent, child, **kw):
    return [syscall(serial, "clone", 56, parent, 1, exit=child, a0="1200011", **kw)]


def events(lines, host="web-1"):
    report = ImportReport()
    return list(import_lines(lines, host, report)), report


def test_hex_encoded_and_split_arguments():
    long_arg = "x" * 8000                        # split by auditd, yet within the schema's 8192
    hexed = long_arg.encode().hex().upper()
    lines = [syscall(10, "execve", 59, 500, 1, comm="echo", exe="/bin/echo"),
             rec("EXECVE", 10, 'argc=3 a0="echo" a1=68656C6C6F20776F726C64 a2_len=16000'),
             rec("EXECVE", 10, f"a2[0]={hexed[:9000]}"),
             rec("EXECVE", 10, f"a2[1]={hexed[9000:]}")]
    evs, _ = events(lines)
    (ex,) = [e for e in evs if e["kind"] == "exec"]
    assert ex["argv"] == ["echo", "hello world", long_arg] and "truncated" not in ex


def test_an_argument_longer_than_the_schema_holds_is_cut_and_marked_truncated():
    # auditd logs a 9000-character argument whole; the schema holds 8192 per argument, and a
    # whole one would be refused by every consumer (the command lost, not just its tail)
    long_arg = "y" * 9000
    lines = [syscall(11, "execve", 59, 501, 1, comm="echo", exe="/bin/echo"),
             rec("EXECVE", 11, f'argc=2 a0="echo" a1="{long_arg}"')]
    evs, _ = events(lines)
    (ex,) = [e for e in evs if e["kind"] == "exec"]
    assert ex["argv"] == ["echo", long_arg[:8192]] and ex["truncated"] is True


def test_interleaved_events_are_grouped_by_serial():
    a, b = execve(20, 600, 1, ["ls", "-l"]), execve(21, 601, 1, ["cat", "/etc/hosts"])
    lines = [a[0], b[0], b[1], a[1], a[2], b[2]]
    evs, _ = events(lines)
    got = {e["pid"]: e["argv"] for e in evs if e["kind"] == "exec"}
    assert got == {600: ["ls", "-l"], 601: ["cat", "/etc/hosts"]}


def test_a_live_group_read_late_is_not_closed_before_its_execve_arrives():
    # The live tail reads auditd's log as it is written: a SYSCALL line can be read seconds after
    # its timestamp (buffered writes, a busy agent), with its EXECVE line still to come. The group
    # is closed by how long it has had nothing new, not by how old its records say they are.
    from whodid.agent.audit import GROUP_QUIET, Grouper, parse_record
    lines = execve(50, 800, 1, ["echo", "after-rotation"], t=T)
    grouper, read_at = Grouper(), T + 30.0          # the records are 30 s old when read
    assert grouper.feed(parse_record(lines[0]), read_at) == []
    assert grouper.flush_quiet(read_at + GROUP_QUIET / 2, GROUP_QUIET) == []     # still growing
    for line in lines[1:]:
        assert grouper.feed(parse_record(line), read_at + 0.5) == []
    (group,) = grouper.flush_quiet(read_at + 0.5 + GROUP_QUIET + 0.1, GROUP_QUIET)
    assert [r.type for r in group] == ["SYSCALL", "EXECVE", "CWD"]
    assert grouper.pending == {} and grouper.arrived == {}


def test_gaps_in_serials_are_reported_and_become_losses():
    lines = execve(30, 700, 1, ["a"]) + execve(31, 701, 1, ["b"]) + execve(40, 702, 1, ["c"])
    evs, report = events(lines)
    (loss,) = [e for e in evs if e["kind"] == "loss"]
    assert loss["count"] == 8 and loss["what"] == "audit records missing after serial 31"
    assert report.gaps[0][:3] == ("web-1", 31, 8) and "8 records lost" in report.summary()


def test_one_file_many_nodes():
    lines = execve(50, 800, 1, ["uptime"], node="db-1") + execve(50, 800, 1, ["whoami"], node="web-2")
    evs, report = events(lines, host="default")
    got = {e["host"]: e["argv"][0] for e in evs if e["kind"] == "exec"}
    assert got == {"db-1": "uptime", "web-2": "whoami"} and not report.gaps


def test_pid_reuse_makes_two_processes():
    lines = (fork(60, 100, 900) + execve(61, 900, 100, ["first"])
             + [syscall(62, "exit_group", 231, 900, 100, a0="0")]
             + fork(63, 100, 900) + execve(64, 900, 100, ["second"]))
    evs, _ = events(lines)
    starts = {e["argv"][0]: e["start"] for e in evs if e["kind"] == "exec"}
    assert starts["first"] != starts["second"]
    forks = [e for e in evs if e["kind"] == "fork" and e["pid"] == 900]
    assert [f["start"] for f in forks] == [starts["first"], starts["second"]]


def test_threads_are_not_processes():
    lines = [syscall(70, "clone", 56, 100, 1, exit=950, a0="3d0f00")]    # CLONE_THREAD set
    lines += execve(71, 100, 1, ["x"])
    evs, _ = events(lines)
    assert not [e for e in evs if e["kind"] == "fork"]


def test_sshd_login_is_tied_to_the_connection_its_listener_accepted_and_traces_to_jim():
    peer = "0200C6B5" + "0A4D0102" + "0" * 16                              # 10.77.1.2:50869
    lines = [syscall(80, "accept4", 288, 300, 1, uid=0, auid=4294967295, ses=4294967295, exit=5, comm="sshd",
                     exe="/usr/sbin/sshd"),
             rec("SOCKADDR", 80, f"saddr={peer}")]
    lines += fork(81, 300, 310, uid=0, auid=4294967295, ses=4294967295)
    lines += execve(82, 310, 300, ["sshd: jim [priv]"], uid=0, auid=4294967295, ses=4294967295)
    lines += [rec("LOGIN", 83, "pid=310 uid=0 subj=unconfined old-auid=4294967295 auid=1001 tty=(none) old-ses=4294967295 ses=7 res=1"),
              rec("USER_AUTH", 84, "pid=310 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=pam_permit acct=\"jim\" exe=\"/usr/sbin/sshd\" hostname=10.77.1.2 addr=10.77.1.2 terminal=ssh res=success'"),
              rec("USER_LOGIN", 85, "pid=310 uid=0 auid=1001 ses=7 msg='op=login id=1001 exe=\"/usr/sbin/sshd\" hostname=? addr=10.77.1.2 terminal=/dev/pts/1 res=success'", enriched='UID="root" AUID="jim" ID="jim"')]
    lines += fork(86, 310, 320, uid=1001, auid=1001, ses=7)
    lines += execve(87, 320, 310, ["-bash"], auid=1001, ses=7)
    lines += fork(88, 320, 330, uid=1001, auid=1001, ses=7)
    lines += execve(89, 330, 320, ["sudo", "-i", "aws", "eks", "delete-cluster"], euid=0, auid=1001, ses=7)
    lines += [syscall(90, "setresuid", 117, 330, 320, uid=0, euid=0, auid=1001, ses=7)]
    lines += fork(91, 330, 340, uid=0, auid=1001, ses=7)
    lines += execve(92, 340, 330, ["aws", "eks", "delete-cluster"], uid=0, auid=1001, ses=7)
    evs, report = events(lines)
    (login,) = [e for e in evs if e["kind"] == "login"]
    assert (login["user"], login["raddr"], login["rport"], login["method"], login["ses"]) == (
        "jim", "10.77.1.2", 50869, "password", 7)
    creds = [(e["via"], e["old_euid"], e["euid"]) for e in evs if e["kind"] == "cred" and e["pid"] == 330]
    assert creds == [("exec", 1001, 0), ("setresuid", 0, 0)]          # sudo's setuid bit, then sudo itself
    (tr,) = Tracer(store_with(evs)).find(Query(pattern="aws eks delete-cluster", limit=1, since=T - 10))
    assert tr.attributed.user == "jim"
    assert [s.edge for s in tr.chain][:2] == ["login", "fork"] and any(s.edge == "sudo" for s in tr.chain)
    assert report.used["USER_LOGIN"] == 1


def test_connect_in_progress_is_recorded_without_a_local_end():
    lines = [syscall(95, "connect", 42, 400, 1, exit=-115, success="no"),
             rec("SOCKADDR", 95, "saddr=02000016" + "0A4D0002" + "0" * 16)]
    evs, _ = events(lines)
    (c,) = [e for e in evs if e["kind"] == "connect"]
    assert (c["raddr"], c["rport"], c["laddr"], c["lport"]) == ("10.77.0.2", 22, "0.0.0.0", 0)


def test_garbage_truncated_and_unknown_records_are_counted_not_fatal():
    lines = ["hello", "type=SYSCALL msg=audit(17000", *execve(100, 1000, 1, ["ok"]),
             rec("MYSTERY_TYPE", 101, "foo=bar"), "\x00\x01binary"]
    evs, report = events(lines)
    assert [e["argv"] for e in evs if e["kind"] == "exec"] == [["ok"]]
    assert report.skipped["lines that are not audit records"] == 3
    assert report.records["MYSTERY_TYPE"] == 1 and report.used.get("MYSTERY_TYPE", 0) == 0
    text = report.summary()
    assert "MYSTERY_TYPE" in text and "e.g. lines that are not audit records: 'hello'" in text


def test_record_and_sockaddr_parsing():
    r = parse_record('node=a type=CWD msg=audit(1.5:7): cwd=2F746D702F612062')
    assert (r.node, r.type, r.ts, r.serial, r.fields["cwd"]) == ("a", "CWD", 1.5, 7, "/tmp/a b")
    assert sockaddr("0A000016000000000000000000000000000000000000000100000000") == ("::1", 22)
    assert sockaddr("0100") is None


# --- reboots: the kernel numbers serials, pids and audit sessions anew at each boot -----------

def jims_login(serial=80, t=None):
    """The sshd login story above, from serial 80: jim (auid 1001, ses 7), shell pid 320."""
    at = (lambda s: None) if t is None else (lambda s: t + (s - serial) / 10)
    peer = "0200C6B5" + "0A4D0102" + "0" * 16
    lines = [syscall(80, "accept4", 288, 300, 1, uid=0, auid=4294967295, ses=4294967295, exit=5, comm="sshd",
                     exe="/usr/sbin/sshd", t=at(80)),
             rec("SOCKADDR", 80, f"saddr={peer}", t=at(80))]
    lines += fork(81, 300, 310, uid=0, auid=4294967295, ses=4294967295, t=at(81))
    lines += [rec("LOGIN", 83, "pid=310 uid=0 old-auid=4294967295 auid=1001 tty=(none) old-ses=4294967295 ses=7 res=1", t=at(83)),
              rec("USER_LOGIN", 85, "pid=310 uid=0 auid=1001 ses=7 msg='op=login id=1001 exe=\"/usr/sbin/sshd\" "
                  "hostname=? addr=10.77.1.2 terminal=/dev/pts/1 res=success'", t=at(85), enriched='ID="jim"')]
    lines += fork(86, 310, 320, uid=1001, auid=1001, ses=7, t=at(86))
    lines += execve(87, 320, 310, ["-bash"], auid=1001, ses=7, t=at(87))
    return lines


def after_reboot(t):
    """The next boot, 1000 s on: auditd starts, serials begin again; pid 320 is another
    process (bob's, at the console: not a login audit.py records) whose session is 7 again."""
    lines = [rec("DAEMON_START", 4000, "op=start ver=3.1 format=enriched kernel=6.1 auid=4294967295 pid=400 "
                 "uid=0 ses=4294967295 res=success", t=t)]
    lines += fork(5, 1, 320, uid=1002, auid=1002, ses=7, t=t + 1)
    lines += execve(6, 320, 1, ["rm", "-rf", "/srv/data"], uid=1002, auid=1002, ses=7, t=t + 2)
    return lines


def test_a_reboot_in_the_log_begins_a_new_boot_and_forgets_the_process_table():
    evs, report = events(jims_login() + after_reboot(T + 1000))
    boots = {e["boot"] for e in evs if e.get("pid") == 320}
    assert len(boots) == 2, boots
    (rm,) = [e for e in evs if e["kind"] == "exec" and e["argv"][0] == "rm"]
    (fork_,) = [e for e in evs if e["kind"] == "fork" and e["pid"] == 320 and e["boot"] == rm["boot"]]
    assert fork_["start"] == rm["start"]             # the new 320, born in the new boot
    # serials beginning again are not lost records: the only gaps are the story's own (82, 84)
    assert [g[1:3] for g in report.gaps] == [(81, 1), (83, 1)]


def test_a_reused_pid_and_session_after_a_reboot_is_not_traced_to_the_old_boots_login():
    evs, _ = events(jims_login() + after_reboot(T + 1000))
    (tr,) = Tracer(store_with(evs)).find(Query(pattern="rm -rf", limit=1))
    assert tr.attributed.user != "jim"
    assert not any(s.login for s in tr.chain)


def test_a_record_written_late_within_one_boot_is_not_a_reboot():
    # a syscall that blocked (a connect) is stamped at its start and logged at its end: a
    # lower serial and an earlier time than the records before it
    lines = execve(500, 700, 1, ["a"], t=T + 50) + execve(420, 701, 1, ["b"], t=T + 42)
    evs, _ = events(lines)
    assert len({e["boot"] for e in evs}) == 1


def test_two_records_logged_out_of_order_on_a_quiet_host_are_not_a_reboot():
    # serial 100501 is an accept that waited ten minutes (stamped when it began); 100500, a
    # syscall of now, was logged just after it by another CPU
    lines = (execve(100_400, 700, 1, ["a"], t=T) + [rec("EOE", 100_400, "", t=T)]
             + [syscall(100_501, "accept4", 288, 300, 1, t=T + 1), rec("EOE", 100_501, "", t=T + 1)]
             + execve(100_500, 701, 1, ["b"], t=T + 600) + [rec("EOE", 100_500, "", t=T + 600)])
    evs, _ = events(lines)
    assert len({e["boot"] for e in evs}) == 1


def test_the_live_tail_names_its_boot_by_the_kernels_boot_id():
    from whodid.agent.audit import AuditAssembler
    asm = AuditAssembler("web-1", boot="0f6c3b1e-boot")
    (ev,) = [e for g in [execve(10, 700, 1, ["a"])] for e in asm.feed([parse_record(line) for line in g])
             if e["kind"] == "exec"]
    assert ev["boot"] == "audit:web-1:0f6c3b1e-boot"


def test_a_pid_reused_after_its_exit_record_was_lost_is_a_new_process():
    # jim's shell (100) runs 900; its exit_group record is lost (a gap); bob's shell (200)
    # clones 900 again. The clone says 900 is new: it must not continue jim's process
    lines = (execve(50, 100, 1, ["bash"], auid=1001) + execve(51, 200, 1, ["bash"], uid=1002, auid=1002)
             + fork(60, 100, 900) + execve(61, 900, 100, ["sleep", "1"])
             # serial 62, 900's exit_group, lost
             + fork(63, 200, 900, uid=1002, auid=1002) + execve(64, 900, 200, ["rm", "-rf", "/srv"], uid=1002, auid=1002))
    evs, report = events(lines)
    starts = {e["argv"][0]: e["start"] for e in evs if e["kind"] == "exec" and e["pid"] == 900}
    assert starts["sleep"] != starts["rm"]
    (tr,) = Tracer(store_with(evs)).find(Query(pattern="rm -rf", limit=1))
    assert [s.pid for s in tr.chain][-2:] == [200, 900]


def test_an_sshd_child_whose_listeners_earlier_clone_was_lost_takes_its_own_accept():
    # sshd accepts a connection and forks its child at once. jim's accept is recorded but the
    # clone that served it is lost (a gap); bob's accept and clone follow. bob's login must
    # carry bob's client port, not jim's (both come through one jump box's address)
    def accept(serial, port):
        peer = "0200" + f"{port:04X}" + "0A4D0102" + "0" * 16
        return [syscall(serial, "accept4", 288, 300, 1, uid=0, auid=4294967295, ses=4294967295, exit=5, comm="sshd",
                        exe="/usr/sbin/sshd"), rec("SOCKADDR", serial, f"saddr={peer}")]
    lines = accept(80, 50869)                                            # jim's; its clone (81) is lost
    lines += accept(82, 50870) + fork(83, 300, 310, uid=0, auid=4294967295, ses=4294967295)
    lines += execve(84, 310, 300, ["sshd: bob [priv]"], uid=0, auid=4294967295, ses=4294967295)
    lines += [rec("USER_LOGIN", 85, "pid=310 uid=0 auid=1002 ses=9 msg='op=login id=1002 exe=\"/usr/sbin/sshd\" "
                  "hostname=? addr=10.77.1.2 terminal=/dev/pts/2 res=success'", enriched='ID="bob"')]
    evs, _ = events(lines)
    (login,) = [e for e in evs if e["kind"] == "login"]
    assert (login["user"], login["rport"]) == ("bob", 50870)
