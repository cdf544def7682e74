"""Nothing in the agent's assembler grows with the events it sees (issue 23: the agent's memory
over a 10-minute soak at 300 execs/s must stay flat). Each table keyed by a process is emptied by
the process's exit, each cache is bounded: after 20,000 short-lived processes - each forked,
exec'd with its own arguments, connecting, writing a watched file and exiting - the tables hold
what they held before, give or take a bound that does not depend on the count."""

from whodid.agent import decode as d

from test_agent_units import args_rec, assembler, exec_rec, file_rec, hdr, shell, sock_rec

TABLES = ("procs", "pending_argv", "unborn", "excluded", "forks_of", "passive", "accepted", "uclients",
          "pending_logins", "_setid_bits", "_budget_reported")


def sizes(asm) -> dict[str, int]:
    return {name: len(getattr(asm, name)) for name in TABLES}


def lifetimes(first_pid: int, n: int, t0: int) -> list[bytes]:
    out = []
    for i in range(n):
        pid, ts = first_pid + i, t0 + i * 1_000_000
        out += [hdr(d.EV_FORK, 100, ts_ns=ts, aux=pid),
                args_rec(pid, ["curl", "-s", f"https://api.example.com/v1/items/{i}"], ts_ns=ts + 1000, uid=1000),
                exec_rec(pid, "/usr/bin/curl", ts_ns=ts + 2000, uid=1000),
                sock_rec(d.EV_CONNECT, pid, "10.0.0.1", 40_000 + i % 20_000, "10.0.0.9", 443, ts_ns=ts + 3000),
                file_rec(pid, 1, f"/etc/app/{i}.conf", ts_ns=ts + 4000),
                hdr(d.EV_EXIT, pid, ts_ns=ts + 5000) + d.EXIT_TAIL.pack(0, 1)]
    return out


def test_the_assemblers_tables_do_not_grow_with_the_processes_it_sees():
    asm = assembler([shell()])
    asm.snapshot()
    asm.feed_all([d.decode(r) for r in lifetimes(1000, 100, 2_000_000_000)])
    before = sizes(asm)
    events = 0
    for batch in range(20):
        events += len(asm.feed_all([d.decode(r) for r in lifetimes(2000 + batch * 1000, 1000,
                                                                  10_000_000_000 + batch * 2_000_000_000)]))
    assert events >= 20_000 * 3                       # forks, execs and exits at least: the records were read
    after = sizes(asm)
    grown = {name: (before[name], after[name]) for name in TABLES if after[name] > before[name] + 64}
    assert not grown, f"grew with the events seen (before, after): {grown}"
