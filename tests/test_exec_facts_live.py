"""The audit login uid and session id the kernel gives a process, on its BPF exec record (issue 17,
rules 2 and 3), with the real agent on this kernel: read from task_struct at the offsets its BTF
gives (agent/btf.py), so a short-lived process carries its own, not what its parent had.

A fresh shell writes a login uid to /proc/self/loginuid, as pam_loginuid does in a login's
process: the kernel gives it a new session id too. Its child /bin/true is gone before the agent
could ask /proc; the shell's own exec record carries the session it had before the write. So
only the kernel's record of the child's exec can say the child's session.
"""

import os
import subprocess

import pytest

from whodid.agent import btf
from whodid.tracer import Store

from kit import LocalAgent
from test_agent_live import REASON

pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}"),
              pytest.mark.skipif(btf.running_kernel()[0].login is None, reason="no task_struct.loginuid in BTF")]

MARK = f"whodid-facts-{os.getpid()}"
AUID = 4242


def test_a_short_lived_exec_carries_the_login_uid_and_session_the_kernel_gave_it(tmp_path):
    db, ids = tmp_path / "agent.db", tmp_path / "ids"
    with LocalAgent(db, tmp_path / "ready", "--auth-log", "none") as agent:
        subprocess.run(["sh", "-c", f'echo {AUID} > /proc/self/loginuid || exit 3; '
                                    f'echo "$(cat /proc/self/loginuid) $(cat /proc/self/sessionid)" > {ids}; '
                                    f'/bin/true {MARK}; exit 0'], check=True)
    assert agent.returncode == 0, agent.err
    auid, ses = (int(x) for x in ids.read_text().split())
    assert auid == AUID
    store = Store.open(db)
    rows = store.db.execute("SELECT auid, ses, snapshot FROM execs WHERE cmd = ?", (f"/bin/true {MARK}",)).fetchall()
    assert rows == [(AUID, ses, None)] or rows == [(AUID, ses, 0)], rows
    # the shell's own exec came before the write: it has the session it was started in
    (shell_ses,) = store.db.execute("SELECT ses FROM execs WHERE cmd LIKE ? AND cmd LIKE 'sh -c %'",
                                    (f"%{MARK}%",)).fetchone()
    assert shell_ses != ses



def test_when_the_struct_reads_do_not_load_the_agent_runs_without_them_and_says_so():
    # offsets that cannot compile (a group half found) stand for a kernel whose verifier
    # refuses the reads: everything else still loads
    from whodid.agent.assemble import Assembler
    from whodid.agent.capture import Capture
    from whodid.agent.procfs import ProcFS
    broken = btf.KernelOffsets(login=(1952, 1956), pid=(1368, 1328, 4, 144, 16, 8), upid_nr=None, ns_inum=None)
    cap = Capture(Assembler("t", "b", 0.0, ProcFS(), lambda u: None, lambda g: None), watch=("/etc",),
                  ringbuf_pages=8, offsets=broken)
    try:
        assert cap.offsets == btf.NONE
        assert "runs without them" in cap.note and "/proc" in cap.note and "\n" not in cap.note
    finally:
        cap.close()
