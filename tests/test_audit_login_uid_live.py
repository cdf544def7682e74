"""Issue 18 on the real kernel: a person's session whose login records are gone from the log
(rotated away) is still the person's. The session's shell is already running when auditd starts -
so the log shows it only cloning - and it runs `sudo` and a command as root. With the log's
LOGIN and user-space records removed, the import names the person by the login uid the kernel
put on every record (inferred), never root, and the shell stands on the chain.

Needs root, auditd, sudo and setpriv; makes one user (useradd) and a sudoers.d entry for it,
both removed after. Slow (auditd): run on its own."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from auditd import Auditd, missing

from whodid.bot import cli
from whodid.tracer import Query, Store, Tracer

PERSON = f"wda{os.getpid() % 100000}"           # unique: other test runs may share this machine
MARK = f"whodid-auid-{os.getpid()}"
SUDOERS = f"/etc/sudoers.d/whodid-test-{PERSON}"
WHY = missing() or next((f"{t} is not installed" for t in ("sudo", "setpriv", "useradd") if not shutil.which(t)),
                        None) or (None if os.geteuid() == 0 else "needs root")
pytestmark = pytest.mark.skipif(bool(WHY), reason=str(WHY))
# what a rotated-away login leaves out: the login uid's setting and PAM's and sshd's records
LOGIN_TYPES = ("LOGIN", "USER_LOGIN", "USER_START", "USER_END", "USER_AUTH", "USER_ACCT", "CRED_ACQ",
               "CRED_DISP", "CRED_REFR", "USER_LOGOUT")


def run(*argv, check=True):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    work = tmp_path_factory.mktemp("auid")
    # the person must reach it: pytest's own folders are root's alone
    shared = Path(tempfile.mkdtemp(prefix="whodid-auid-"))
    shared.chmod(0o777)
    run("useradd", "-M", "-s", "/bin/sh", PERSON)
    try:
        with open(SUDOERS, "w") as fh:
            fh.write(f"{PERSON} ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(SUDOERS, 0o440)
        uid = pwd.getpwnam(PERSON).pw_uid
        go = shared / "go"
        os.mkfifo(go, 0o666)
        go.chmod(0o666)
        session = shared / "session.sh"
        # the person's shell: its login uid set as pam_loginuid sets it, then running as the
        # person, waiting for auditd; `exit 3` keeps sh from exec'ing sudo in its own process
        session.write_text(f"echo $$ > {shared}/pid\nread x < {go}\nsudo -n /bin/true {MARK}\nexit 3\n")
        session.chmod(0o755)
        start = (f"echo {uid} > /proc/self/loginuid || exit 9; "
                 f"exec setpriv --reuid={uid} --regid={uid} --clear-groups sh {session}")
        subprocess.run(["setsid", "sh", "-c", f"(sh -c '{start}' &); exit 0"], check=True)
        for _ in range(100):
            if (shared / "pid").exists() and (shared / "pid").read_text().strip():
                break
            time.sleep(0.05)
        shell = int((shared / "pid").read_text())
        with Auditd(work / "auditd") as auditd:                # the shell began before auditd
            with open(go, "w") as fh:
                fh.write("go\n")
            for _ in range(300):
                if not os.path.exists(f"/proc/{shell}"):
                    break
                time.sleep(0.05)
            time.sleep(1.0)
        log = auditd.log
    finally:
        run("userdel", PERSON, check=False)
        if os.path.exists(SUDOERS):
            os.unlink(SUDOERS)
        shutil.rmtree(shared, ignore_errors=True)
    lines = log.read_text(errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if not any(f"type={t} " in line for t in LOGIN_TYPES)]
    assert any(MARK in line for line in kept), "auditd did not log the command"
    rotated = work / "rotated.log"
    rotated.write_text("".join(kept))
    db = str(work / "audit.db")
    assert cli.main(["import-audit", str(rotated), "--host", "audited", "--db", db]) == 0
    return Store.open(db), shell, uid


def test_the_person_is_named_by_the_login_uid_inferred_never_root(imported):
    store, shell, uid = imported
    (tr,) = [t for t in Tracer(store).find(Query(pattern=MARK, host="audited", limit=5)) if t.poi.program == "true"]
    assert tr.poi.user == "root"
    assert tr.attributed.user == PERSON and tr.attributed.confidence == "inferred", tr.attributed
    assert f"login uid ({uid})" in tr.attributed.how
    steps = [(s.pid, s.program, s.user) for s in tr.chain]
    # the shell, seen only cloning, stands first with the person's name; then sudo, then the command
    assert steps[0] == (shell, "sh", PERSON), steps
    assert [p for _, p, _ in steps][-2:] == ["sudo", "true"], steps
    assert all(s.login_user == PERSON for s in tr.chain), [s.login_user for s in tr.chain]
