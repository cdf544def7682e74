"""Agent outages (issue 17, rule 6): a chain that crosses a time a host's agent was not running
says so with the time range, and the links across it are inferred.

Pure rules (outages.py) on plain runs and steps, then the store and the tracer on small
hand-made stores: one run marks its start, heartbeats and stop in `host` events, as the agent
does (agent/cli.py).
"""

import os
from dataclasses import dataclass

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.events import EventError, parse_event
from whodid.tracer.outages import Outage, Run, crossed, mark_links, notes, outages
from whodid.tracer.when import clock

from kit import T0, Host, LocalAgent, ssh_session, store_with

B = Host("host-b", "10.0.0.2")
A = Host("host-a", "10.0.0.1")


def mark(h: Host, ts: float, run: str, state: str, boot: str | None = None) -> dict:
    return {"v": 1, "kind": "host", "host": h.name, "boot": boot or h.boot, "ts": T0 + ts, "run": run,
            "state": state}


def run(first, last, stopped=None, host="host-b", boot="boot-1", name=None):
    return Run(host, boot, name or f"r{first}", T0 + first, T0 + last, None if stopped is None else T0 + stopped)


@dataclass
class S:                    # the parts of a chain step the rules read
    host: str
    start: float
    snapshot: bool = False
    inferred: bool = False
    note: str | None = None


# --- the rules, pure ------------------------------------------------------------------------

def test_a_clean_stop_then_a_start_is_an_outage_between_them():
    (o,) = outages([run(0, 100, stopped=100), run(200, 300)])
    assert (o.since, o.until, o.clean, o.reboot) == (T0 + 100, T0 + 200, True, False)


def test_an_unclean_end_is_an_outage_from_the_last_heartbeat():
    (o,) = outages([run(0, 160), run(200, 300)])           # killed some time after its mark at 160
    assert (o.since, o.until, o.clean) == (T0 + 160, T0 + 200, False)


def test_no_outage_before_the_first_run_after_the_last_or_where_runs_overlap():
    assert outages([run(100, 200)]) == []
    assert outages([run(0, 300), run(100, 200), run(250, 400)]) == []      # two agents at once
    assert outages([]) == []


def test_outages_are_per_host_and_a_reboot_in_between_is_said():
    found = outages([run(0, 100, host="host-a"), run(500, 600, host="host-a", boot="boot-2"),
                     run(50, 150, host="host-b"), run(160, 170, host="host-b")])
    assert [(o.host, o.since - T0, o.until - T0, o.reboot) for o in found] == [
        ("host-a", 100, 500, True), ("host-b", 150, 160, False)]


OUT = Outage("host-b", T0 + 100, T0 + 200, clean=True, reboot=False)


@pytest.mark.parametrize("prev, cur, crosses", [
    (S("host-b", T0 + 10), S("host-b", T0 + 300), True),          # parent before, child after
    (S("host-b", T0 + 10), S("host-b", T0 + 50), False),          # both before
    (S("host-b", T0 + 250), S("host-b", T0 + 300), False),        # both after
    (S("host-b", T0 + 210), S("host-b", T0 + 150, snapshot=True), True),   # only /proc saw it start
    (S("host-b", T0 + 10), S("host-b", T0 + 50, snapshot=True), False),    # a snapshot from before
    (S("host-a", T0 + 10), S("host-a", T0 + 300), False),         # another host's outage
    (S("host-a", T0 + 10), S("host-b", T0 + 300), False),         # an ssh hop: its login was recorded
])
def test_which_links_cross(prev, cur, crosses):
    assert (crossed(prev, cur, [OUT]) is OUT) is crosses


def test_a_crossing_link_is_marked_inferred_and_an_earlier_inference_keeps_its_note():
    chain = [S("host-b", T0 + 5), S("host-b", T0 + 10, inferred=True, note="inferred: joined by session 7"),
             S("host-b", T0 + 300)]
    mark_links(chain, [OUT])
    assert [s.inferred for s in chain] == [False, True, True]
    assert chain[1].note == "inferred: joined by session 7"                 # crosses nothing
    assert "was not running from" in chain[2].note and clock(T0 + 100) in chain[2].note
    chain[1].start = T0 + 150
    chain[1].snapshot = True
    mark_links(chain, [OUT])
    assert chain[1].note.startswith("inferred: joined by session 7; inferred: host-b's agent was not running")


def test_the_note_names_the_range_and_only_for_hosts_and_times_of_the_chain():
    chain = [S("host-a", T0), S("host-b", T0 + 10), S("host-b", T0 + 300)]
    (said,) = notes(chain, T0 + 300, [OUT])
    assert said == (f"host-b's agent was not running from {clock(T0 + 100)} to {clock(T0 + 200)} (1m 40s): "
                    "links on host-b in that time may be missing")
    assert notes(chain, T0 + 300, [Outage("host-c", T0 + 100, T0 + 200, True, False)]) == []
    assert notes([S("host-b", T0 + 250), S("host-b", T0 + 300)], T0 + 300, [OUT]) == []
    unclean = Outage("host-b", T0 + 100, T0 + 200, clean=False, reboot=False)
    assert "did not stop cleanly" in notes(chain, T0 + 300, [unclean])[0]


# --- the schema ---------------------------------------------------------------------------

def test_run_marks_parse_and_bad_ones_name_the_field():
    ev = parse_event(mark(B, 0, "r1", "alive"))
    assert (ev["run"], ev["state"]) == ("r1", "alive")
    for bad, field, words in ((dict(state="paused"), "state", "unknown run state 'paused'"),
                              (dict(state=None), "state", "go together"),
                              (dict(run=None), "run", "go together"),
                              (dict(run=""), "run", "must not be empty")):
        ev = {k: v for k, v in {**mark(B, 0, "r1", "start"), **bad}.items() if v is not None}
        with pytest.raises(EventError) as info:
            parse_event(ev)
        assert info.value.field == field and words in str(info.value)


# --- the store ------------------------------------------------------------------------------

def test_the_store_keeps_runs_whatever_order_their_marks_arrive_in_and_once():
    marks = [mark(B, 100, "r1", "stop"), mark(B, 60, "r1", "alive"), mark(B, 0, "r1", "start"),
             mark(B, 200, "r2", "start"), mark(B, 260, "r2", "alive")]
    store = store_with(marks)
    assert store.write(marks) == 0                                   # sent twice, stored once
    assert store.db.execute("SELECT run, first - ?, last - ?, started - ?, stopped - ? FROM agent_runs "
                            "ORDER BY first", [T0] * 4).fetchall() == [
        ("r1", 0, 100, 0, 100), ("r2", 200, 260, 200, None)]
    (o,) = store.outages(["host-b"], T0 + 150, T0 + 150)
    assert (o.since, o.until, o.clean) == (T0 + 100, T0 + 200, True)
    assert store.outages(["host-b"], T0 + 300, T0 + 400) == []       # r2 is running
    assert store.outages(["host-b"], T0 + 10, T0 + 90) == []
    assert store.outages(["host-a", "nowhere"], T0, T0 + 400) == []


def test_the_store_finds_an_outage_among_many_runs():
    marks = []
    for i in range(50):                         # a crash loop: a run every 10 s, 5 s each
        marks += [mark(B, i * 10, f"r{i}", "start"), mark(B, i * 10 + 5, f"r{i}", "alive")]
    store = store_with(marks)
    assert [(o.since - T0, o.until - T0) for o in store.outages(["host-b"], T0 + 198, T0 + 217)] == [
        (195, 200), (205, 210), (215, 220)]


# --- the trace ------------------------------------------------------------------------------

def story(runs: bool = True, stop: bool = True, snapshot: bool = False) -> list[dict]:
    """jim's shell on host-b (from 0.3 s) outlives an agent restart: the first run stops at 100,
    the next starts at 200; jim's command at 300 is forked by the shell - or, with snapshot, by
    a subshell started during the outage that only the restarted agent's /proc snapshot saw."""
    ev = ssh_session(B, 0, 200, "jim", 1001, "203.0.113.7", 53122, ses=7)
    parent = 201
    if snapshot:
        ev += [B.exec(150, 250, ["bash"], uid=1001, auid=1001, ses=7, ppid=201, pstart=201000, snapshot=True)]
        parent = 250
    ev += [B.fork(300, 260, parent), B.exec(300.01, 260, ["rm", "-rf", "/srv/data"], uid=1001, auid=1001, ses=7)]
    if runs:
        ev += [mark(B, -5, "r1", "start"), mark(B, 60, "r1", "alive")]
        ev += [mark(B, 100, "r1", "stop")] if stop else []
        ev += [mark(B, 200, "r2", "start"), mark(B, 400, "r2", "alive")]
    return ev


def trace(events):
    (tr,) = Tracer(store_with(events)).find(Query(pattern="rm -rf", limit=1))
    return tr


def test_a_chain_across_an_agent_restart_names_the_outage_and_infers_the_crossing_link():
    tr = trace(story())
    assert (f"host-b's agent was not running from {clock(T0 + 100)} to {clock(T0 + 200)} (1m 40s): links on "
            "host-b in that time may be missing") in tr.notes
    *before, rm = tr.chain
    assert rm.command == "rm -rf /srv/data" and rm.inferred
    assert "what the parent did then was not recorded" in rm.note
    assert not any(s.inferred for s in before)
    assert any(n.startswith("host-b: inferred: host-b's agent was not running") for n in tr.notes)


def test_without_run_marks_nothing_is_said_or_inferred():
    """The control: the same facts with no runs (the auditd import has none) show no outage."""
    tr = trace(story(runs=False))
    assert not any("not running" in n for n in tr.notes)
    assert not any(s.inferred for s in tr.chain)


def test_an_agent_killed_shows_an_outage_from_its_last_heartbeat():
    tr = trace(story(stop=False))
    (said,) = [n for n in tr.notes if "was not running" in n and not n.startswith("host-b:")]
    assert f"from {clock(T0 + 60)} to {clock(T0 + 200)} (2m 20s; it did not stop cleanly" in said


def test_a_process_started_during_the_outage_has_an_inferred_parent():
    tr = trace(story(snapshot=True))
    sub = next(s for s in tr.chain if s.pid == 250)
    assert sub.snapshot and sub.inferred and "read from /proc when the agent restarted" in sub.note
    rm = tr.chain[-1]
    assert not rm.inferred                      # forked after the restart, by a process the new run saw


def test_an_outage_outside_the_chains_time_or_host_is_not_mentioned():
    ev = story(runs=False)
    ev += [mark(B, 500, "r1", "start"), mark(B, 510, "r1", "stop"), mark(B, 600, "r2", "start")]
    ev += [mark(A, -5, "a1", "start"), mark(A, 10, "a1", "stop"), mark(A, 100, "a2", "start")]
    tr = trace(ev)
    assert not any("not running" in n for n in tr.notes)
    assert not any(s.inferred for s in tr.chain)


# --- retention ------------------------------------------------------------------------------

def test_retention_keeps_the_runs_a_kept_chain_crosses_and_the_last_before_it():
    day = 86400.0
    ev = ssh_session(B, day, 200, "jim", 1001, "203.0.113.7", 53122, ses=7)
    ev += [B.fork(59 * day, 260, 201), B.exec(59 * day + 0.1, 260, ["rm", "-rf", "/srv/data"], uid=1001, auid=1001)]
    for name, t0, t1, state in (("b0", -20, -15, "stop"), ("b1", -10, -5, "stop"), ("b2", 0, 10, "stop"),
                                ("b3", 20, 25, "stop"), ("b4", 40, 59.5, "alive"),
                                ("a1", 0, 1, "stop"), ("a2", 2, 3, "stop"), ("a3", 4, 5, "alive"),
                                ("a4", 50, 59, "alive")):
        h = A if name[0] == "a" else B
        ev += [mark(h, t0 * day, name, "start"), mark(h, t1 * day, name, state)]
    store = store_with(ev)
    store.prune(T0 + 30 * day, now=T0 + 60 * day)
    assert [r for (r,) in store.db.execute("SELECT run FROM agent_runs ORDER BY run")] == [
        "a3", "a4", "b1", "b2", "b3", "b4"]
    (tr,) = Tracer(store).find(Query(pattern="rm -rf", limit=1))
    said = [n for n in tr.notes if n.startswith("host-b's agent was not running")]
    assert [n.split(" (")[0] for n in said] == [
        f"host-b's agent was not running from {clock(T0 + a * day)} to {clock(T0 + b * day)}"
        for a, b in ((10, 20), (25, 40))]


# --- the agent, in local mode -----------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="the netlink process connector needs root")
def test_the_agent_marks_its_runs_into_a_local_store(tmp_path):
    """`whodid-agent run --db` twice (the netlink capture: no BPF needed): two runs, each with its
    start, heartbeats and clean stop, and the outage between them."""
    db = tmp_path / "whodid.db"
    for n in (1, 2):
        with LocalAgent(db, tmp_path / f"ready{n}", "--mode", "netlink", "--heartbeat", "0.2",
                        "--auth-log", "none") as agent:
            pass
        assert agent.returncode == 0, agent.err
    store = Store.open(db)
    runs = store.db.execute("SELECT first, last, started, stopped FROM agent_runs ORDER BY first").fetchall()
    assert len(runs) == 2
    for first, last, started, stopped in runs:
        assert first == started < last == stopped
    (o,) = store.outages(["live"], runs[0][0], runs[1][1])
    assert (o.since, o.until, o.clean) == (runs[0][3], runs[1][2], True)


def test_a_login_from_a_fleet_host_whose_agent_was_down_says_why_its_client_is_missing():
    ev = [{"v": 1, "kind": "host", "host": "host-a", "boot": "boot-1", "ts": T0, "addrs": [A.addr]},
          mark(A, 0, "a1", "start"), mark(A, 50, "a1", "stop"), mark(A, 150, "a2", "start")]
    ev += ssh_session(B, 100, 200, "ec2-user", 1000, A.addr, 45555)
    ev += [B.fork(300, 260, 201), B.exec(300.01, 260, ["rm", "-rf", "/srv/data"], uid=1000, auid=1000)]
    (said,) = [n for n in trace(ev).notes if "no matching ssh connection" in n]
    assert said.endswith(f"; host-a's agent was not running from {clock(T0 + 50)} to {clock(T0 + 150)}")
    (said,) = [n for n in trace(ev[:3] + ev[4:]).notes if "no matching ssh connection" in n]     # a1 runs on
    assert "not running" not in said
