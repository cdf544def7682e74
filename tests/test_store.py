import json
import os
import sqlite3

import pytest

from whodid.tracer import Store, StoreError, ingest
from whodid.tracer import migrations

from kit import T0, Host, store_with

H = Host("web-01", "10.0.0.1")


def _story():
    return [
        H.exec(0, 1, ["/sbin/init"], snapshot=True),
        H.fork(10, 50, 1),
        H.exec(10.1, 50, ["bash", "-c", "echo 'a  b'", ""]),
        H.login(11, 60, "jim", "203.0.113.7", 5000),
        H.connect(12, 50, "10.0.0.2", 22, 40000),
        H.cred(13, 50, 1000, 0),
        H.file(14, 50, "write", "/etc/hosts"),
        H.exit(15, 50, code=2),
    ]


def test_the_same_events_twice_are_stored_once(tmp_path):
    store = store_with(_story(), tmp_path / "s.db")
    first = store.counts()
    report = ingest(store, _story())
    assert report.accepted == len(_story())
    assert report.new == 0
    assert store.counts() == first


def test_argv_survives_spaces_and_empty_arguments():
    store = store_with(_story())
    proc = store.search_commands("echo", glob=False, since=None, until=None, host_glob=None, limit=5)[0][0]
    (image,) = store.images(proc.id)
    assert image.argv == ["bash", "-c", "echo 'a  b'", ""]
    assert image.cmd == "bash -c echo 'a  b' "


def test_common_commands_store_no_separate_argv():
    store = store_with(_story())
    rows = store.db.execute("SELECT cmd, argv FROM execs WHERE cmd = '/sbin/init'").fetchall()
    assert rows == [("/sbin/init", None)]


def test_fork_names_the_parent_whatever_the_exec_said_and_in_any_order():
    # A late exec sees the reaper (pid 1) as parent after the real parent exited; the fork
    # event is the truth, and the earliest exec beats later ones when there is no fork.
    events = [
        H.exec(0, 1, ["/sbin/init"]),
        H.exec(0, 40, ["bash"]),
        H.fork(10, 50, 40),
        H.exec(10.1, 50, ["sleep", "1"], ppid=40, pstart=40000),
        H.exec(20, 50, ["true"], ppid=1, pstart=1000),
        H.exec(30, 70, ["a"], ppid=40, pstart=40000),
        H.exec(31, 70, ["b"], ppid=1, pstart=1000),
    ]
    for order in (events, list(reversed(events))):
        store = store_with(order)
        parents = {}
        for pid in (50, 70):
            (proc_id,) = store.db.execute("SELECT id FROM procs WHERE pid = ?", [pid]).fetchone()
            parents[pid] = store.proc(store.proc(proc_id).parent).pid
        assert parents == {50: 40, 70: 40}


def test_children_in_a_window_by_fork_or_by_the_exec_that_named_the_parent():
    # a daemon's children of one window (the context of a trace, issue 23): a child counts from
    # its fork, or - with no fork seen (auditd, an agent started late) - from the exec naming the parent
    store = store_with([
        H.exec(0, 40, ["/usr/sbin/cron", "-f"]),
        H.fork(100, 50, 40), H.exec(100.1, 50, ["old"]),
        H.fork(5000, 60, 40), H.exec(5000.1, 60, ["forked"]),
        H.exec(5100, 70, ["exec-only"], ppid=40, pstart=40000),
        H.fork(9000, 80, 40), H.exec(9000.1, 80, ["later"]),
    ])
    (cron,) = store.db.execute("SELECT id FROM procs WHERE pid = 40").fetchone()
    pid = {i: store.proc(i).pid for i in store.children([cron])}
    assert sorted(pid.values()) == [50, 60, 70, 80]
    window = (T0 + 4000, T0 + 6000)
    assert sorted(store.proc(i).pid for i in store.children([cron], between=window)) == [60, 70]
    # the real index answers it: no scan of the daemon's every child
    plan = " ".join(r[3] for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM procs WHERE parent IN (?) AND coalesce(fork_ts, parent_ts) "
        "BETWEEN ? AND ? ORDER BY id", [cron, *window]))
    assert "procs_parent_at (parent=? AND <expr>>? AND <expr><?)" in plan
    images = store.images_of(pid)
    assert {pid[i]: [im.cmd for im in ims] for i, ims in images.items()} == \
        {50: ["old"], 60: ["forked"], 70: ["exec-only"], 80: ["later"]}


def test_newest_matching_processes_read_from_the_index_agree_with_reading_every_row(monkeypatch):
    # search_commands without a host glob reads the (cmd_id, ts) index alone, newest first, until
    # `limit` processes are found (issue 23); with one it reads every matching row. Same answers:
    # also when one busy process holds the newest hundreds of matches, and past MAX_CMD_IDS.
    import random
    from whodid.tracer import store as store_mod
    rng = random.Random(5)
    events = [H.exec(0, 1, ["/sbin/init"])]
    for pid in range(100, 160):
        events.append(H.fork(pid, pid, 1))
        for _ in range(rng.randint(1, 30)):
            events.append(H.exec(pid + rng.uniform(0, 500), pid, ["sudo", "-n", f"job-{rng.randint(0, 40)}"]))
    events += [H.fork(900, 170, 1)] + [H.exec(900 + i, 170, ["sudo", "-n", "loop"]) for i in range(300)]
    store = store_with(events)
    for most in (2000, 3):
        monkeypatch.setattr(store_mod, "MAX_CMD_IDS", most)
        for limit, since in ((1, None), (5, None), (40, None), (5, T0 + 300), (200, T0 + 100)):
            ask = dict(glob=False, since=since, until=None, limit=limit)
            fast = [(p.id, im.ts, im.cmd) for p, im in store.search_commands("sudo", host_glob=None, **ask)]
            rows = [(p.id, im.ts, im.cmd) for p, im in store.search_commands("sudo", host_glob="*", **ask)]
            assert fast and fast == rows, (most, limit, since)
    # the newest 300 matches are one process's: the second process is found past them
    two = store.search_commands("sudo", glob=False, since=None, until=None, host_glob=None, limit=2)
    assert [p.pid for p, _ in two][0] == 170 and len({p.pid for p, _ in two}) == 2


def test_names_are_per_host():
    a, b = Host("a", "10.0.0.1"), Host("b", "10.0.0.2")
    ea = a.exec(1, 10, ["x"], uid=1001)
    eb = {**b.exec(1, 10, ["x"], uid=1001), "user": "mallory", "euser": "mallory"}
    store = store_with([ea, eb])
    ids = dict(store.db.execute("SELECT name, id FROM hosts").fetchall())
    assert store.user_name(ids["a"], 1001) == "jim"
    assert store.user_name(ids["b"], 1001) == "mallory"


def test_migrations_set_the_version_and_reopen_cleanly(tmp_path):
    path = tmp_path / "s.db"
    Store.open(path, create=True).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    Store.open(path).close()


def test_missing_store_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="no whodid store at .*whodid demo"):
        Store.open(tmp_path / "nope.db")


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not sqlite at all, just some bytes" * 100)
    with pytest.raises(StoreError, match="is not a whodid store"):
        Store.open(path)


def test_someone_elses_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a whodid store .*invoices"):
        Store.open(path)


def test_a_newer_store_is_refused(tmp_path):
    path = tmp_path / "s.db"
    Store.open(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this whodid"):
        Store.open(path)


def test_host_inventory_tracks_first_and_last_event_and_addresses():
    events = _story() + [{"v": 1, "kind": "host", "host": "web-01", "boot": "boot-1", "ts": 1_700_000_005.0,
                          "addrs": ["10.0.0.1"]}]
    store = store_with(events)
    first, last, addrs = store.db.execute("SELECT first_ts, last_ts, addrs FROM hosts").fetchone()
    assert (first, last) == (1_700_000_000.0, 1_700_000_015.0)
    assert json.loads(addrs) == ["10.0.0.1"]
    assert store.hosts_with_addr("10.0.0.1") == [1]


def _open_and_write(args):
    path, host = args
    store = Store.open(path, create=True)
    h = Host(host, "10.0.0.9")
    report = ingest(store, [h.exec(i, 100 + i, ["echo", str(i)]) for i in range(200)], batch=20)
    store.close()
    return report.accepted


def test_several_writers_can_create_and_fill_one_store_at_once(tmp_path):
    # Agents on one machine (or simulated hosts) share a store file: opening, migrating and
    # writing must wait for each other, never fail with "database is locked".
    import multiprocessing
    path = str(tmp_path / "shared.db")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        accepted = pool.map(_open_and_write, [(path, f"host-{i}") for i in range(4)])
    assert accepted == [200] * 4
    assert Store.open(path).counts()["execs"] == 800


def test_a_version_1_store_is_migrated_to_the_latest(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    from whodid.tracer.store import _split_sql
    for statement in _split_sql(migrations.STEPS[0][1]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST >= 2
    assert "losses" in store.db.table_names()


def test_a_version_6_store_gets_its_distinct_commands_and_is_still_searchable(tmp_path):
    import sqlite3
    from whodid.tracer.store import _split_sql
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path)
    for number, sql in migrations.STEPS:
        if number <= 6:
            for statement in _split_sql(sql):
                conn.execute(statement)
    conn.execute("INSERT INTO hosts (id, name) VALUES (1, 'web')")
    conn.execute("INSERT INTO boots (id, host, boot) VALUES (1, 1, 'b')")
    conn.execute("INSERT INTO procs (id, boot, pid, start) VALUES (1, 1, 10, 10), (2, 1, 11, 11)")
    conn.execute("INSERT INTO execs (proc, ts, cmd, uid, euid) VALUES (1, 5.0, 'aws eks delete-cluster', 0, 0), "
                 "(2, 6.0, 'aws eks delete-cluster', 0, 0)")
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.db.execute("SELECT count(*) FROM cmds").fetchone()[0] == 1
    hits = store.search_commands("delete-cluster", glob=False, since=None, until=None, host_glob=None, limit=5)
    assert [p.pid for p, _ in hits] == [11, 10]


def test_a_batch_that_fails_midway_leaves_no_ids_behind(tmp_path):
    # A write that SQLite rolls back (here a full disk) must not leave this connection believing
    # in the process ids it handed out: the retry would store execs of processes that do not exist
    store = store_with(_story(), tmp_path / "s.db")
    batch = [e for pid in range(1000, 1600)
             for e in (H.fork(20, pid, 1), H.exec(20.1, pid, ["job", str(pid), "x" * 200]), H.exit(21, pid))]
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.write(batch)
    store.db.execute("PRAGMA max_page_count = 1073741823")
    store.write(batch)
    orphans = store.db.execute("SELECT count(*) FROM execs e LEFT JOIN procs p ON p.id = e.proc "
                               "WHERE p.id IS NULL").fetchone()[0]
    assert orphans == 0
    assert store.db.execute("SELECT count(*) FROM execs WHERE cmd LIKE 'job %'").fetchone()[0] == 600


# --- a process across an agent restart (issue 17, rule 6) ---------------------------------
# The first agent names a process by its fork record's time (ns); a restarted agent finds it
# running and names it by /proc's start, a whole 10 ms tick at or before the fork record.

def _procs_of(store, pid):
    return [r[0] for r in store.db.execute("SELECT id FROM procs WHERE pid = ? ORDER BY start", [pid])]


def test_a_process_named_by_its_proc_tick_after_a_restart_is_the_one_whose_fork_was_seen(tmp_path):
    db = tmp_path / "s.db"
    store_with([H.exec(0, 400, ["bash"], snapshot=True, start=4_000_000_000),
                H.fork(10, 500, 400, start=123_456_789, pstart=4_000_000_000),
                H.exec(10.01, 500, ["sh", "-c", "read x; true"], start=123_456_789)], db)
    # the restarted agent, into the store opened anew: nothing cached from the first ingest
    store = Store.open(db)
    ingest(store, [H.exec(10, 500, ["sh", "-c", "read x; true"], snapshot=True, start=120_000_000,
                          ppid=400, pstart=4_000_000_000),
                   H.fork(20, 501, 500, start=200_000_001, pstart=120_000_000),
                   H.exec(20.01, 501, ["true"], start=200_000_001),
                   H.exit(21, 500, code=3, start=120_000_000)])
    (shell,) = _procs_of(store, 500)
    assert store.proc(shell).exit_code == 3
    (child,) = _procs_of(store, 501)
    assert store.proc(child).parent == shell
    assert store.proc(shell).parent == _procs_of(store, 400)[0]


def test_pids_reused_within_a_tick_stay_two_processes_and_a_tick_with_no_seen_fork_stays_its_own():
    store = store_with([
        H.fork(10, 500, 1, start=121_000_000), H.exit(10.002, 500, start=121_000_000),
        H.fork(10.003, 500, 1, start=124_000_000),           # the pid again, within the same tick
        H.exec(11, 500, ["sleep", "9"], snapshot=True, start=120_000_000),
        H.exec(11, 600, ["sleep", "9"], snapshot=True, start=120_000_000),     # no fork seen for 600
        H.fork(12, 700, 1, start=300_000_000),                               # seen, but a tick later
        H.exec(12, 700, ["sleep", "9"], snapshot=True, start=200_000_000),
    ])
    first, second = _procs_of(store, 500)
    assert [store.proc(p).start for p in (first, second)] == [121_000_000, 124_000_000]
    assert store.db.execute("SELECT count(*) FROM execs WHERE proc = ?", [second]).fetchone()[0] == 1
    assert store.db.execute("SELECT count(*) FROM execs WHERE proc = ?", [first]).fetchone()[0] == 0
    assert len(_procs_of(store, 600)) == 1
    assert len(_procs_of(store, 700)) == 2


# The restarted agent's exec for a tick-named process says what it found: parent, uid, login
# uid and audit session. A pid reused within the tick (the seen process's exit lost while the
# agent was down) fits by pid and time alone; the join needs that word to agree (issue 17).

def _seen_then_found(**found):
    """jim's shell 400 (uid 1001, ses 7) forks 500 (it runs as jim), seen by the first agent;
    the restarted agent finds a 500 in the same tick, described by `found`."""
    first = [H.exec(0, 400, ["bash"], snapshot=True, start=4_000_000_000, uid=1001, auid=1001, ses=7),
             H.exec(0, 450, ["bash"], snapshot=True, start=4_500_000_000, uid=1001, auid=1001, ses=7),
             H.fork(10, 500, 400, start=123_456_789, pstart=4_000_000_000),
             H.exec(10.01, 500, ["sleep", "99"], start=123_456_789, uid=1001, auid=1001, ses=7)]
    said = dict(ppid=400, pstart=4_000_000_000, uid=1001, auid=1001, ses=7)
    said.update(found)
    restart = [H.exec(10, 500, ["sleep", "99"], snapshot=True, start=120_000_000,
                      **{k: v for k, v in said.items() if v is not None}),
               H.fork(20, 501, 500, start=200_000_001, pstart=120_000_000)]
    return first, restart


def test_a_tick_named_process_whose_word_agrees_is_joined(tmp_path):
    first, restart = _seen_then_found()
    store = store_with(first + restart)
    (proc,) = _procs_of(store, 500)
    assert store.proc(_procs_of(store, 501)[0]).parent == proc


@pytest.mark.parametrize("found, why", [
    (dict(ppid=450, pstart=4_500_000_000), "another parent, alive and not an ancestor"),
    (dict(uid=1002, auid=None, ses=None), "another uid"),
    (dict(auid=1002), "another login uid"),
    (dict(ses=9), "another audit session"),
])
def test_a_tick_named_process_whose_word_disagrees_is_its_own_process(found, why):
    first, restart = _seen_then_found(**found)
    store = store_with(first + restart)
    tick_named, seen = _procs_of(store, 500)            # by start: the tick is the earlier
    assert store.proc(tick_named).start == 120_000_000, why
    assert store.proc(_procs_of(store, 501)[0]).parent == tick_named, why
    assert [i.cmd for i in store.images(seen)] == ["sleep 99"], why


def test_a_process_adopted_by_init_after_its_parent_exited_is_still_joined():
    # nohup'd: its shell exited while the agent was down, so /proc names init as its parent
    first, restart = _seen_then_found(ppid=1, pstart=0)
    store = store_with(first)
    ingest(store, restart)                  # the restarted agent's batch: 400 is not in it
    assert len(_procs_of(store, 500)) == 1


def test_a_process_claiming_init_as_parent_while_the_seen_parent_is_found_running_is_its_own():
    # 400 is alive (the restarted agent found it), so its child was never orphaned to init
    first, restart = _seen_then_found(ppid=1, pstart=0)
    alive = H.exec(0, 400, ["bash"], snapshot=True, start=4_000_000_000, uid=1001, auid=1001, ses=7)
    store = store_with(first)
    ingest(store, [alive] + restart)
    assert len(_procs_of(store, 500)) == 2


def test_the_word_is_weighed_when_a_child_names_the_process_before_its_own_exec_comes(tmp_path):
    # a child's snapshot can come first (pids are listed in order, and pids wrap), and a later
    # batch, on another connection, must reach the same answer
    first, restart = _seen_then_found(uid=1002, auid=None, ses=None)
    db = tmp_path / "s.db"
    store_with(first, db)
    store = Store.open(db)
    child = H.exec(10.5, 499, ["sleep", "1"], snapshot=True, start=130_000_000, ppid=500, pstart=120_000_000)
    ingest(store, [child] + restart)
    store = Store.open(db)
    ingest(store, [H.exit(30, 500, code=4, start=120_000_000)])
    tick_named, seen = _procs_of(store, 500)            # by start: the tick is the earlier
    assert store.proc(_procs_of(store, 499)[0]).parent == tick_named
    assert store.proc(tick_named).exit_code == 4 and store.proc(seen).exit_code is None


def test_an_audit_sourced_boot_never_joins_by_tick():
    # audit names a process by its clone's time in ms, or 0 when it was running before the
    # log began: starts that may be whole ticks, but not /proc's
    A = Host("db-1", "10.0.2.40", boot="audit:db-1")
    clone_ms = 1_700_000_000_000                    # a clone at a whole 10 s: a multiple of the tick
    store = store_with([A.fork(10, 500, 1, start=clone_ms + 5), A.exec(10.01, 500, ["sleep", "9"], start=clone_ms + 5),
                        A.exec(11, 500, ["sleep", "9"], start=clone_ms, uid=0)])
    assert len(_procs_of(store, 500)) == 2


@pytest.mark.parametrize("order", ["seen first", "snapshot first"])
def test_a_restarted_agents_snapshot_of_a_seen_exec_adds_no_image(order):
    # The restarted agent's /proc snapshot restates the shell's image, dated at its fork; kept,
    # it stood before the shell's own exec on chains across an agent restart ("setuid to root,
    # setuid to jim" when the exec was sshd's). Whatever order the two arrive in (a spool sent
    # late), the process keeps one image: the exec that was seen.
    seen = [H.fork(10, 200, 1), H.exec(10.01, 200, ["bash"], uid=1001, comm="bash")]
    snap = [H.exec(10, 200, ["-bash"], uid=1001, comm="bash", snapshot=True)]
    store = store_with(seen + snap if order == "seen first" else snap + seen)
    rows = store.db.execute("SELECT ts, cmd, snapshot FROM execs").fetchall()
    assert rows == [(seen[1]["ts"], "bash", None)]


def test_a_snapshot_of_a_program_execd_while_no_agent_ran_goes_after_the_seen_images():
    ev = [H.fork(10, 200, 1), H.exec(10.01, 200, ["bash"], uid=1001, comm="bash"),
          H.exec(10, 200, ["python3", "job.py"], uid=1001, comm="python3", snapshot=True)]
    store = store_with(ev)
    rows = store.db.execute("SELECT ts, cmd, snapshot FROM execs ORDER BY ts").fetchall()
    assert [(cmd, snap) for _, cmd, snap in rows] == [("bash", None), ("python3 job.py", 1)]
    assert rows[1][0] > rows[0][0]


@pytest.mark.parametrize("seen, snap, cut, restated", [
    # the same image; a login shell's `-bash`; argv[0] spelled by path
    (["bash"], ["bash"], False, True),
    (["bash"], ["-bash"], False, True),
    (["/usr/bin/python3", "job.py"], ["python3", "job.py"], False, True),
    # a process that rewrote its title (sshd, postgres): the first word names no program it ran
    (["/usr/sbin/sshd", "-D", "-R"], ["sshd: jim [priv]"], False, True),
    # the same program with other arguments: exec'd again while no agent ran
    (["python3", "deploy.py"], ["python3", "-c", "import shutil; shutil.rmtree('/srv')"], False, False),
    # an argv cut at the agent's limit compares up to the cut
    (["python3", "-c", "print(1)" * 3], ["python3", "-c", "print(1)" * 3 + "x" * 9000], True, True),
    (["python3", "-c", "print(1)"], ["python3", "run.py", "x" * 9000], True, False),
])
def test_which_snapshot_restates_the_last_seen_exec(seen, snap, cut, restated):
    from whodid.tracer.store import restates
    assert restates("x", seen, cut, "x", snap, False) is restated


def test_a_snapshot_under_another_comm_is_another_program():
    from whodid.tracer.store import restates
    assert not restates("bash", ["bash"], False, "vim", ["bash"], False)


def test_a_snapshot_restating_an_earlier_image_but_not_the_last_is_a_new_exec():
    # bash, then vim (seen), then bash again while no agent ran: /proc shows what it is now
    ev = [H.fork(10, 200, 1), H.exec(10.01, 200, ["bash"], uid=1001, comm="bash"),
          H.exec(11, 200, ["vim"], uid=1001, comm="vim"),
          H.exec(10, 200, ["bash"], uid=1001, comm="bash", snapshot=True)]
    rows = store_with(ev).db.execute("SELECT cmd, snapshot FROM execs ORDER BY ts").fetchall()
    assert rows == [("bash", None), ("vim", None), ("bash", 1)]


def test_a_snapshot_of_another_program_sent_before_the_seen_exec_still_goes_after_it():
    # a spool sent late: the restarted agent's snapshot (dated at the fork) arrives first
    ev = [H.fork(10, 200, 1), H.exec(10, 200, ["python3", "-c", "rmtree"], uid=1001, comm="python3", snapshot=True),
          H.exec(10.01, 200, ["python3", "deploy.py"], uid=1001, comm="python3")]
    rows = store_with(ev).db.execute("SELECT cmd, snapshot FROM execs ORDER BY ts").fetchall()
    assert rows == [("python3 deploy.py", None), ("python3 -c rmtree", 1)]


@pytest.mark.parametrize("order", ["seen first", "snapshot first"])
def test_a_snapshot_of_the_same_program_under_another_argv0_is_a_new_exec(order):
    # `exec -a foo python3 -c rmtree` while no agent ran, after `python3 deploy.py` was seen:
    # same comm, argv[0] names another program, and `foo` is no title python3 gave itself.
    # Read as a retitle, the rmtree exec was dropped without a word.
    seen = [H.fork(10, 200, 1), H.exec(10.01, 200, ["python3", "deploy.py"], uid=1001, comm="python3")]
    snap = [H.exec(10, 200, ["foo", "-c", "rmtree"], uid=1001, comm="python3", snapshot=True)]
    rows = store_with(seen + snap if order == "seen first" else snap + seen).db.execute(
        "SELECT cmd, snapshot FROM execs ORDER BY ts").fetchall()
    assert rows == [("python3 deploy.py", None), ("foo -c rmtree", 1)]


@pytest.mark.parametrize("seen, snap, restated", [
    (["/usr/sbin/sshd", "-D"], ["sshd:", "jim", "[priv]"], True),
    (["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg"], ["postgres: checkpointer"], True),
    (["python3", "deploy.py"], ["foo", "-c", "rmtree"], False),
    (["python3", "deploy.py"], ["sshd: jim [priv]"], False),
])
def test_a_retitle_names_the_program_it_retitles(seen, snap, restated):
    from whodid.tracer.store import restates
    comm = os.path.basename(seen[0])[:15]
    assert restates(comm, seen, False, comm, snap, False) is restated


@pytest.mark.parametrize("seen, seen_cut, snap, snap_cut", [
    # a cut argv kept three arguments: a whole argv of fewer, or whose last is shorter, is another
    (["python3", "-c", "rm -rf /srv/data"], True, ["python3", "-c", "rm"], False),
    (["python3", "-c", "print(1)", "a"], True, ["python3", "-c"], False),
    (["python3", "-c"], False, ["python3", "-c", "print(1)", "a"], True),
])
def test_a_cut_argv_restates_only_an_argv_it_is_the_start_of(seen, seen_cut, snap, snap_cut):
    from whodid.tracer.store import restates
    assert not restates("python3", seen, seen_cut, "python3", snap, snap_cut)


def test_a_snapshot_written_by_another_store_on_the_file_is_still_restated(tmp_path):
    # Two Stores on one file (the collector's writer, a `whodid ingest`): one made the process
    # from its fork (its _fresh set), the other wrote the restarted agent's snapshot; the seen
    # exec, written by the first, must still find and drop the snapshot restating it.
    path = str(tmp_path / "s.db")
    a, b = Store.open(path, create=True), Store.open(path)
    ingest(a, [H.fork(10, 200, 1)])
    ingest(b, [H.exec(10, 200, ["-bash"], uid=1001, comm="bash", snapshot=True)])
    ingest(a, [H.exec(10.01, 200, ["bash"], uid=1001, comm="bash")])
    assert a.db.execute("SELECT cmd, snapshot FROM execs").fetchall() == [("bash", None)]


def test_two_losses_of_one_window_are_both_kept(tmp_path):
    """An agent's poll can say several losses over the same window (since, ts): the ring buffer
    full, TCP connections whose start it had not seen, each uid over its budget. Keyed on the
    window alone, the store kept the first and dropped the rest - a trace said 3 connections
    were not recorded where 5,000 records (processes among them) were lost."""
    store = Store.open(tmp_path / "w.db", create=True)
    base = {"v": 1, "kind": "loss", "host": "web-1", "boot": "b1", "ts": 1000.0, "since": 940.0}
    unseen = {**base, "count": 3, "what": "TCP connections established whose start the agent had not seen: 3"}
    full = {**base, "count": 5000, "what": "ring buffer full"}
    assert store.write([unseen, full]) == 2
    assert store.write([unseen, full]) == 0                     # a batch sent again is still stored once
    got = store.losses(["web-1"], 900, 1100)
    assert sorted((g["count"], g["what"]) for g in got) == [(3, unseen["what"]), (5000, "ring buffer full")]


def test_a_store_before_losses_were_told_apart_keeps_its_losses(tmp_path):
    """Migration 15 rebuilds losses: an existing store's rows survive, once each."""
    from whodid.tracer.store import _split_sql
    path = tmp_path / "v14.db"
    conn = sqlite3.connect(path)
    for number, sql in migrations.STEPS:
        if number <= 14:
            for statement in _split_sql(sql):
                conn.execute(statement)
    conn.execute("INSERT INTO hosts (id, name) VALUES (1, 'web-1')")
    conn.execute("INSERT INTO losses VALUES (1, 940.0, 1000.0, 7, 'ring buffer full'), (1, 1.0, 2.0, 1, NULL)")
    conn.execute("PRAGMA user_version = 14")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    assert store.losses(["web-1"], 0, 2000) == [
        {"host": "web-1", "since": 1.0, "ts": 2.0, "count": 1, "what": None},
        {"host": "web-1", "since": 940.0, "ts": 1000.0, "count": 7, "what": "ring buffer full"}]
    loss = {"v": 1, "kind": "loss", "host": "web-1", "boot": "b1", "ts": 2.0, "since": 1.0, "count": 1}
    assert store.write([loss]) == 0                             # a loss without words, once too
    store.close()
    assert Store.open(path).counts()["losses"] == 2
