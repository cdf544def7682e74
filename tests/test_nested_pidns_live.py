"""Nothing that runs on a host is silently dropped (issue 17, rule 5), with the real agent on
this kernel: a command started in a nested pid namespace (`unshare --pid --fork`, as a
container runtime does) is recorded and traced back to the shell that started it.

In the agent's normal mode this holds. In `--pid-namespace self` mode it does not yet: the
BPF filter asks bpf_get_ns_current_pid_tgid(dev, ino) for the task's pid in the agent's
namespace, and that helper answers only for a task whose *active* namespace is exactly that
one (kernel/bpf/helpers.c: ns_match on task_active_pid_ns), so a descendant namespace's task
is dropped. And in either mode a short-lived nested command is stored with its parent's
namespace (it is gone before /proc is asked). Those tests are strict xfails: they document
the gaps and fail loudly the day a gap is closed, so the marker is removed then.
"""

import os

import pytest

from whodid.tracer import Query, Tracer

from pidns_driver import run_workload
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-nested-{os.getpid()}"

# Run under the agent by pidns_driver: a marked shell starts a command in a nested pid namespace. `; true`
# keeps the nested shell alive, so /bin/true is a forked child there, not the shell's exec;
# its marker is joined by printf, so it is in that process's argv alone.
WORKLOAD = r'''
subprocess.run(["bash", "-c", f"true {mark}-parent; unshare --pid --fork --mount-proc "
                f"sh -c '/bin/true \"$(printf %s-%s {mark} nested)\"; true'; exit 0"], stdin=subprocess.DEVNULL)
'''


@pytest.fixture(scope="module", params=[
    "normal",
    pytest.param("pid-namespace-self", marks=pytest.mark.xfail(
        strict=True, reason="bpf_get_ns_current_pid_tgid matches the exact namespace only: "
                            "descendant namespaces are dropped (issue 17, rule 5, open)")),
])
def nested(request, tmp_path_factory):
    store, driver_pid = run_workload(tmp_path_factory.mktemp(request.param), WORKLOAD, MARK, request.param, 1.5)
    return request.param, store, driver_pid


def test_a_command_in_a_nested_pid_namespace_is_traced_to_the_shell_that_started_it(nested):
    mode, store, driver_pid = nested
    (tr,) = Tracer(store).find(Query(pattern=f"{MARK}-nested", limit=5))
    assert tr.poi.command == f"/bin/true {MARK}-nested"
    commands = [s.command or "" for s in tr.chain]
    assert any(c.startswith("unshare ") for c in commands), (mode, commands)
    assert any(f"{MARK}-parent" in c for c in commands), (mode, commands)
    pids = [s.pid for s in tr.chain]
    assert driver_pid in pids, (mode, commands, pids)        # pids as the agent's namespace sees them
    # inside the nested namespace /bin/true is a low pid (the nested shell is its pid 1);
    # recorded under its pid outside, it is not
    assert tr.poi.pid > 2, (mode, pids)


def test_the_nested_command_is_recorded_with_its_own_pid_namespace(nested, request):
    mode, store, _ = nested
    if mode == "normal":
        # the nested command, its shell and the waiting `unshare` are all gone before their
        # batch is read, so /proc cannot say where they ran: each is given its parent's
        # namespace, the host's. The kernel records carry no namespace (no helper names it).
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=(
            "a short-lived process in a nested pid namespace is recorded with its parent's "
            "namespace (issue 17, rule 5, open)")))
    rows = store.db.execute("SELECT cmd, pidns FROM execs WHERE cmd LIKE ?", (f"%{MARK}-%",)).fetchall()
    ns = {("nested" if cmd.endswith(f"{MARK}-nested") else "parent"): pidns for cmd, pidns in rows}
    assert ns.get("nested") and ns.get("parent"), (mode, rows)
    assert ns["nested"] != ns["parent"], (mode, rows)
