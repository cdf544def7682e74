"""Adversarial audit logs (issue 18's review): hostile or broken lines, a hostile --passwd,
logs of many hosts without EOE, pid reuse by sshd sessions and by pid-namespace clones. Each
test is an input that once gave a wrong answer, lost an event, crashed or hung the import."""

import json

import pytest

from kit import store_with
from test_audit import T, events, execve, fork, rec, syscall

from whodid.agent.audit import passwd_names
from whodid.bot import cli
from whodid.tracer import Query, Tracer

UNSET = 4294967295


def login(serial, pid, user, uid, ses, addr="10.0.0.9"):
    return [rec("USER_LOGIN", serial, f"pid={pid} uid=0 auid={uid} ses={ses} msg='op=login id={uid} "
                f"exe=\"/usr/sbin/sshd\" hostname=? addr={addr} terminal=/dev/pts/1 res=success'",
                enriched=f'ID="{user}"')]


def session(serial, user, uid, ses, cmd, exit_recorded=True):
    """sshd's listener (300) forks session 310, which logs user's login and runs cmd (pid 320+serial)."""
    lines = fork(serial, 300, 310, uid=0, auid=UNSET, ses=UNSET) + login(serial + 1, 310, user, uid, ses)
    lines += fork(serial + 2, 310, 320 + serial, uid=0, auid=uid, ses=ses)
    lines += execve(serial + 3, 320 + serial, 310, cmd, uid=uid, auid=uid, ses=ses)
    if exit_recorded:
        lines += [syscall(serial + 4, "exit_group", 231, 310, 300, uid=0, auid=uid, ses=ses)]
    return lines


def traced(evs, pattern):
    (tr,) = Tracer(store_with(evs)).find(Query(pattern=pattern, limit=1, since=T - 10))
    return tr


# --- the process table ---------------------------------------------------------------------------

def test_a_second_login_on_a_reused_sshd_pid_is_not_dropped_nor_joined_to_the_first():
    # jim's session sshd is pid 310; after it exits, bob's session gets pid 310 again. Bob's
    # login was dropped (the pid "had logged in"), or - without the exit record - made part of
    # jim's process, so bob's command was on jim's login.
    for exit_recorded in (True, False):
        evs, _ = events(session(80, "jim", 1001, 7, ["id"], exit_recorded)
                        + session(100, "bob", 1002, 8, ["rm", "-rf", "/srv"], exit_recorded))
        logins = [(e["user"], e["start"]) for e in evs if e["kind"] == "login"]
        assert [u for u, _ in logins] == ["jim", "bob"] and logins[0][1] != logins[1][1], logins
        tr = traced(evs, "rm -rf")
        assert tr.attributed.user == "bob" and tr.chain[0].edge == "login", (exit_recorded, tr.attributed)
        assert traced(evs, "id").attributed.user == "jim"


def test_a_namespace_clone_by_an_exited_container_process_does_not_end_a_daemon_of_init():
    # the host's sshd listener (700, parent init) runs on; a container's process (5000) clones its
    # own pid 700 and exits. sshd's next record says ppid=1: still the listener, not a new
    # process of 5000 (which put the container process above every later ssh session).
    lines = ([syscall(50, "accept4", 288, 700, 1, uid=0, auid=UNSET, ses=UNSET, exit=5, comm="sshd", exe="/usr/sbin/sshd")]
             + execve(51, 5000, 4990, ["containerd-shim"], uid=0, auid=UNSET, ses=UNSET)
             + fork(52, 5000, 700, uid=0, auid=UNSET, ses=UNSET)
             + [syscall(53, "exit_group", 231, 5000, 4990, uid=0, auid=UNSET, ses=UNSET)]
             + [syscall(54, "accept4", 288, 700, 1, uid=0, auid=UNSET, ses=UNSET, exit=5, comm="sshd", exe="/usr/sbin/sshd")])
    evs, _ = events(lines)
    assert {e["start"] for e in evs if e.get("pid") == 700} == {0}
    assert not [e for e in evs if e["kind"] == "fork" and e["pid"] == 700]


# --- hostile and broken lines --------------------------------------------------------------------

def test_a_huge_serial_or_time_is_a_garbage_line_not_a_crash():
    # a serial of 5,000 digits made int() raise ValueError out of the import; a time of 400
    # digits is float('inf'), and a clone at that time crashed int(inf)
    clone = fork(1, 100, 200)[0]
    lines = ["type=SYSCALL msg=audit(1.0:" + "9" * 5000 + "): pid=1",
             clone.replace(clone[clone.index("(") + 1:clone.index(":")], "9" * 400 + ".000"), *execve(5, 300, 1, ["ok"])]
    evs, report = events(lines)
    assert [e["argv"] for e in evs if e["kind"] == "exec"] == [["ok"]]
    assert report.skipped["lines that are not audit records"] == 2


def test_a_long_run_of_letters_without_fields_is_read_in_one_pass():
    # the key pattern, tried at every letter of a 1 MB run with no `=`, was quadratic: 40 KB
    # took 6.7 s, 1 MB hours (an import stuck on one hostile host's line)
    lines = ["type=SYSCALL msg=audit(1700000000.100:1): " + "a" * 1_000_000, *execve(5, 300, 1, ["ok"])]
    evs, _ = events(lines)
    assert [e["argv"] for e in evs if e["kind"] == "exec"] == [["ok"]]


def test_a_10_mb_hex_argument_is_cut_to_the_schema_and_marked():
    # (the hex check once kept ~70 bytes of regex state per character: 700 MB for this line)
    sc = execve(1, 100, 1, ["echo", "x"])[0]
    evs, _ = events([sc, rec("EXECVE", 1, "argc=2 a0=\"echo\" a1=" + "41" * 5_000_000), rec("EOE", 1, "")])
    (ex,) = [e for e in evs if e["kind"] == "exec"]
    assert ex["argv"][0] == "echo" and set(ex["argv"][1]) == {"A"} and ex["truncated"] is True


def test_many_hosts_without_eoe_lines_are_grouped_host_by_host():
    # a shipper that drops EOE lines, 500 hosts interleaved: each record scanned every host's
    # pending groups (2,000 hosts x 20 execs took 93 s, now 4 s); the result must be whole
    lines = []
    for i in range(5000):
        lines += execve(1000 + i // 500, 5000 + i, 1, ["id", str(i)], node=f"h{i % 500}")
    evs, _ = events(lines)
    got = sorted((e["host"], e["argv"][1]) for e in evs if e["kind"] == "exec")
    assert got == sorted((f"h{i % 500}", str(i)) for i in range(5000))


# --- a hostile --passwd ---------------------------------------------------------------------------

def test_passwd_uids_are_ascii_digits_as_the_host_reads_them():
    # "١٠٠١" (Arabic-Indic digits) is not a uid to the host's getpwuid, but int() read it as 1001,
    # and as the first entry it named mallory for jim's uid; "²" and a 5,000-digit uid made
    # int() raise, refusing the whole file
    text = ("mallory:x:\u0661\u0660\u0660\u0661:1001::/home/m:/bin/sh\n" "sq:x:\u00b2:0::/:/bin/sh\n"
            "big:x:" + "9" * 5000 + ":0::/:/bin/sh\n" "jim:x:1001:1001:Jim:/home/jim:/bin/bash\n")
    assert passwd_names(text) == {1001: "jim"}


def test_a_hostile_passwd_never_fails_the_import(tmp_path, capsys):
    log = tmp_path / "audit.log"
    log.write_text("\n".join(execve(5, 300, 1, ["id"])) + "\n")
    pw = tmp_path / "passwd"
    pw.write_bytes(b"\xff\xfe\x00bin\x00ary\nx:x:\xc2\xb2:0::/:/bin/sh\njim:x:1001:1001::/h:/bin/sh\n")
    assert cli.main(["import-audit", str(log), "--host", "far", "--db", str(tmp_path / "w.db"), "--passwd", str(pw)]) == 0
    assert "1 exec" in capsys.readouterr().out


def test_two_hosts_without_node_names_sharing_serials_never_swap_a_commands_arguments():
    # a central log of two hosts written without node= (auditd's default name_format = none): both
    # hosts' counters are near 100. Host A's jim runs `id` (serial 101, t+0.5 s); host B's bob runs
    # `rm -rf /srv` (serial 101, t+0.2 s). Grouped by serial alone, B's EXECVE joined A's syscall:
    # jim was shown running bob's rm. An event is one time and one serial.
    a = execve(101, 330, 320, ["id"], uid=1001, auid=1001, ses=7, t=T + 0.5)
    b = execve(101, 440, 430, ["rm", "-rf", "/srv"], uid=1002, auid=1002, ses=9, t=T + 0.2)
    lines = [a[0], b[0], b[1], a[1], a[2], b[2], rec("EOE", 101, "", t=T + 0.5), rec("EOE", 101, "", t=T + 0.2)]
    evs, report = events(lines)
    got = sorted((e["pid"], e["uid"], tuple(e["argv"])) for e in evs if e["kind"] == "exec")
    assert got == [(330, 1001, ("id",)), (440, 1002, ("rm", "-rf", "/srv"))]
    assert "mix" in report.summary()


@pytest.mark.xfail(strict=True, reason=(
    "the process table orders a clone and a process's first record by time (_late_clone, _ended): a clone "
    "stamped before the known process was first seen is taken for that process's own late (vfork) clone. "
    "Serial order would tell a stepped clock, but a vfork parent's clone is rightly later in serial and "
    "earlier in time than its child's exec, by as long as the child runs before exec; telling the two "
    "apart needs CLONE_VFORK from a0 (clone3 hides it in a struct)"))
def test_a_clock_stepped_back_does_not_join_a_reused_pid_to_its_old_process():
    # cron (100, root) runs bob's job 900, seen only by a connect at T+10 (no exec in the log);
    # its exit is lost. NTP steps the clock back a minute; cron clones 900 again for jim's job
    # (T-50) and it execs `id`. The clone is later in serial order than 900's first record.
    lines = [syscall(10, "connect", 42, 900, 100, uid=1002, auid=1002, ses=9, exit=0, comm="backup", t=T + 10),
             rec("SOCKADDR", 10, "saddr=02000016" + "0A4D0002" + "0" * 16, t=T + 10)]
    lines += fork(20, 100, 900, uid=0, auid=UNSET, ses=UNSET, t=T - 50)
    lines += execve(21, 900, 100, ["id"], uid=1001, auid=1001, ses=7, t=T - 49.9)
    evs, _ = events(lines)
    starts = {e["start"] for e in evs if e.get("pid") == 900 and e["kind"] in ("exec", "connect")}
    assert len(starts) == 2 and not [e for e in evs if e["kind"] == "cred"]


def test_uid_0_under_another_name_in_passwd_is_never_a_person(tmp_path, capsys):
    # the host's passwd names uid 0 `toor` first (a second root account, as BSD ships and some
    # images add): root's session, its logins rotated away, carries login uid 0 - that is root,
    # whatever the name, and root is no person
    lines = [syscall(86, "clone", 56, 320, 310, exit=330, a0="1200011", uid=0, auid=0, ses=7, comm="bash",
                     exe="/usr/bin/bash")]
    lines += execve(87, 330, 320, ["rm", "-rf", "/srv/data"], uid=0, auid=0, ses=7)
    log = tmp_path / "audit.log"
    log.write_text("\n".join(line.split("\x1d")[0] for line in lines) + "\n")
    (tmp_path / "passwd").write_text("toor:x:0:0:Bourne-again Superuser:/root:/bin/sh\nroot:x:0:0::/root:/bin/bash\n")
    db = str(tmp_path / "w.db")
    assert cli.main(["import-audit", str(log), "--host", "far", "--db", db, "--passwd", str(tmp_path / "passwd")]) == 0
    capsys.readouterr()
    assert cli.main(["trace", "rm -rf", "--db", db, "--json", "--since", "2023-11-14T00:00:00Z"]) == 0
    (m,) = [m for m in json.loads(capsys.readouterr().out)["matches"] if m["poi"]["command"].startswith("rm")]
    assert m["attributed_to"]["user"] not in ("toor", "root") and m["confidence"] != "inferred", m["attributed_to"]


def test_two_hosts_without_node_names_far_apart_in_serials_are_said_to_be_mixed():
    # host A's serials near 50,000, host B's near 10 (booted lately), one log without node=: each
    # switch looked like a reboot, silently. The summary must say the log mixes hosts.
    lines = []
    for k in range(5):
        for serial, pid, who, t in ((50_000 + k, 310, 1001, T + k), (10 + k, 410, 1002, T + k + 0.3)):
            lines += execve(serial, pid + k, pid, ["ls"], uid=who, auid=who, t=t) + [rec("EOE", serial, "", t=t)]
    evs, report = events(lines)
    assert len([e for e in evs if e["kind"] == "exec" and not e.get("snapshot")]) == 10
    assert "seems to mix hosts without node= names" in report.summary()


def test_a_real_reboot_is_not_said_to_mix_hosts():
    lines = execve(50_000, 320, 310, ["ls"], t=T) + execve(5, 320, 310, ["id"], t=T + 300)
    evs, report = events(lines)
    assert "web-1: 1 reboot" in report.summary() and "mix hosts" not in report.summary()


def test_a_nul_byte_in_a_login_address_is_not_a_crash():
    # a log partly zeroed by a power loss: inet_pton raised ValueError out of the import
    lines = login(85, 310, "jim", 1001, 7, addr="10.0.0.9\x00\x00") + execve(90, 330, 1, ["ok"])
    evs, _ = events(lines)
    assert [e["argv"] for e in evs if e["kind"] == "exec"] == [["ok"]]
