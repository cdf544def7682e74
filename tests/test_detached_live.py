"""Detached work reaches the person (issue 17, rule 1), with the real agent on this kernel.

`setsid`, a double fork, `nohup ... &` then the parent exits, `sudo -b`: by the time the
detached process runs its command, its parent is gone and the kernel names init (or a
subreaper) as its parent. The chain must follow the fork recorded when it happened, up to
the marked parent shell and the process that started it - in the agent's normal mode and in
`--pid-namespace self` mode, where the agent runs in a pid namespace of its own (there the
namespace's init is the driver script itself, so orphans are reparented to it).
"""

import os
import shutil

import pytest

from whodid.tracer import Query, Tracer

from pidns_driver import run_workload
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-detached-{os.getpid()}"

# Run under the agent by pidns_driver: each detaching workload from a marked parent shell. The detached
# command's marker is only in its own argv (printf joins it in the last shell), so a trace
# for it matches that process alone.
WORKLOAD = r'''
later = "sleep 0.5; exec /bin/true \"$(printf %%s-%%s {mark} %s)\"".replace("{mark}", mark)
work = {
    "setsid": ["bash", "-c", f"true {mark}-parent-setsid; setsid sh -c '{later % 'setsid'}' & exit 0"],
    "double-fork": ["sh", "-c", f"true {mark}-parent-double-fork; (sh -c '{later % 'double-fork'}' &) ; exit"],
    "nohup": ["bash", "-c", f"true {mark}-parent-nohup; nohup sh -c '{later % 'nohup'}' >/dev/null 2>&1 & exit 0"],
}
if os.path.exists("/usr/bin/sudo"):
    work["sudo-b"] = ["bash", "-c", f"true {mark}-parent-sudo-b; sudo -b sh -c '{later % 'sudo-b'}'; exit 0"]
for argv in work.values():
    subprocess.run(argv, stdin=subprocess.DEVNULL)
'''


@pytest.fixture(scope="module", params=["normal", "pid-namespace-self"])
def detached(request, tmp_path_factory):
    # the detached commands run after their parents exited: 2.5 s for them to finish
    store, driver_pid = run_workload(tmp_path_factory.mktemp(request.param), WORKLOAD, MARK, request.param, 2.5)
    return request.param, store, driver_pid


@pytest.mark.parametrize("how", ["setsid", "double-fork", "nohup", "sudo-b"])
def test_a_detached_command_is_traced_to_its_parent_shell_and_above(detached, how):
    mode, store, driver_pid = detached
    if how == "sudo-b" and not shutil.which("sudo"):
        pytest.skip("sudo is not installed")
    (tr,) = Tracer(store).find(Query(pattern=f"{MARK}-{how}", limit=5))
    assert tr.poi.command == f"/bin/true {MARK}-{how}"
    commands = [s.command or "" for s in tr.chain]
    assert any(f"{MARK}-parent-{how}" in c for c in commands), (mode, commands)
    pids = [s.pid for s in tr.chain]
    assert driver_pid in pids, (mode, commands, pids)
    if mode == "normal":
        assert os.getpid() in pids, (mode, commands, pids)       # and the test process above it
