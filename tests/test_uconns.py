"""Unix-socket connections (issue 19): the uconnect/uaccept schema, the uconns row that joins
them, the questions asked of it ("who was connected to this tmux server then"), retention."""

import itertools
import sqlite3

import pytest

from kit import T0, Host, store_with

from whodid.tracer import Store, ingest, migrations
from whodid.tracer.events import EventError, parse_event

H = Host("jump", "10.0.0.1")
SOCK = "/tmp/tmux-1000/default"
DAY = 86400.0


def row(store, conn):
    cols = ("client_proc", "server_proc", "listener_proc", "path", "bound", "ts_connect", "ts_accept",
            "client_uid", "server_uid", "client_pid", "listener_pid", "snapshot")
    r = store.db.execute(f"SELECT {', '.join(cols)} FROM uconns WHERE conn = ?", [conn]).fetchone()
    return dict(zip(cols, r)) if r else None


def proc_id(store, pid, start=None):
    return store.find_proc("jump", "boot-1", pid, start or pid * 1000).id


# --- the schema ---------------------------------------------------------------------------

def test_unix_connection_events_parse_with_every_field():
    ev = parse_event({**H.uconnect(1, 500, "@/tmp/.X11-unix/X0", "ffff8881-1", peer=(400, 400000)),
                      "bound": "/tmp/ssh-x.sock", "peer_uid": 1001, "snapshot": True})
    assert (ev["kind"], ev["path"], ev["peer_pid"], ev["peer_start"], ev["peer_uid"], ev["snapshot"]) == \
        ("uconnect", "@/tmp/.X11-unix/X0", 400, 400000, 1001, True)
    ev = parse_event({**H.uaccept(1, 400, "ffff8881-1", peer=(500, 500000)), "path": SOCK, "peer_uid": 1002})
    assert (ev["kind"], ev["conn"], ev["path"], ev["peer_pid"], ev["peer_uid"]) == \
        ("uaccept", "ffff8881-1", SOCK, 500, 1002)


@pytest.mark.parametrize("kind, change, field, words", [
    ("uconnect", {"conn": None}, "conn", "required for kind 'uconnect'"),
    ("uaccept", {"conn": None}, "conn", "required for kind 'uaccept'"),
    ("uconnect", {"path": None}, "path", "required"),
    ("uconnect", {"conn": ""}, "conn", "must not be empty"),
    ("uaccept", {"conn": "x" * 257}, "conn", "longer than 256"),
    ("uconnect", {"conn": 17}, "conn", "expected a string"),
    ("uconnect", {"path": ""}, "path", "must not be empty"),
    ("uaccept", {"path": ""}, "path", "must not be empty"),
    ("uconnect", {"path": "x" * 8193}, "path", "longer than 8192"),
    ("uconnect", {"path": "/tmp/\ud800"}, "path", "lone surrogate"),
    ("uconnect", {"bound": ""}, "bound", "must not be empty"),
    ("uconnect", {"peer_pid": -1}, "peer_pid", "negative"),
    ("uaccept", {"peer_pid": True}, "peer_pid", "expected an integer"),
    ("uaccept", {"peer_uid": "jim"}, "peer_uid", "expected an integer"),
    ("uconnect", {"peer_start": 1 << 64, "peer_pid": 4}, "peer_start", "does not fit in 64 bits"),
    ("uconnect", {"peer_start": 5}, "peer_start", "without peer_pid"),
    ("uaccept", {"snapshot": "yes"}, "snapshot", "true or false"),
])
def test_a_bad_unix_connection_event_names_the_field(kind, change, field, words):
    ev = H.uconnect(1, 500, SOCK, "c-1") if kind == "uconnect" else H.uaccept(1, 400, "c-1")
    for k, v in change.items():
        if v is None:
            ev.pop(k)
        else:
            ev[k] = v
    with pytest.raises(EventError) as info:
        parse_event(ev)
    assert info.value.field == field and words in str(info.value)


def test_a_bad_unix_event_is_refused_alone_and_its_batch_kept():
    store = Store.open(":memory:", create=True)
    report = ingest(store, [H.uconnect(1, 500, SOCK, "c-1"), H.uconnect(2, 501, SOCK, ""),
                            H.uaccept(3, 400, "c-1")])
    assert (report.accepted, report.rejected) == (2, 1) and report.samples[0].field == "conn"
    assert row(store, "c-1")["server_proc"] is not None


# --- the store: one row per connection ----------------------------------------------------

def _jim_attaches():
    """jim's tmux client (500) attaches to the server (400): both ends, both peers, both uids."""
    return [{**H.uconnect(10, 500, SOCK, "c-1", peer=(400, 400000)), "peer_uid": 1000},
            {**H.uaccept(10.001, 400, "c-1", peer=(500, 500000)), "path": SOCK, "peer_uid": 1001}]


@pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
def test_connect_and_accept_join_in_either_order(order):
    events = _jim_attaches()
    store = store_with([events[i] for i in order])
    assert store.counts()["uconns"] == 1
    assert row(store, "c-1") == {"client_proc": proc_id(store, 500), "server_proc": proc_id(store, 400),
                                 "listener_proc": proc_id(store, 400), "path": SOCK, "bound": SOCK,
                                 "ts_connect": T0 + 10, "ts_accept": T0 + 10.001, "client_uid": 1001,
                                 "server_uid": 1000, "client_pid": 500, "listener_pid": 400, "snapshot": 0}


def test_every_arrival_order_of_a_connections_events_gives_the_same_row():
    # the agent's connect, a restarted agent's snapshot of it, the accept naming another pid for
    # the client, and the accept resent: 24 orders, one row
    events = [H.uconnect(10, 500, SOCK, "c-1", peer=(400, 400000)),
              {**H.uconnect(100, 500, SOCK, "c-1", peer=(400, 400000)), "snapshot": True},
              {**H.uaccept(10.5, 400, "c-1", peer=(501, 501000)), "path": SOCK + ".tmp", "peer_uid": 1001},
              {**H.uaccept(10.5, 400, "c-1", peer=(501, 501000)), "path": SOCK + ".tmp", "peer_uid": 1001}]
    rows = set()
    for order in itertools.permutations(events):
        store = store_with(list(order))
        r = row(store, "c-1")
        rows.add(tuple((k, store.proc(v).pid if k.endswith("_proc") else v) for k, v in r.items()))
    assert len(rows) == 1, rows
    assert dict(rows.pop()) == {"client_proc": 500, "server_proc": 400, "listener_proc": 400, "path": SOCK,
                                "bound": SOCK + ".tmp", "ts_connect": T0 + 10, "ts_accept": T0 + 10.5,
                                "client_uid": 1001, "server_uid": None, "client_pid": 501, "listener_pid": 400,
                                "snapshot": 0}


def test_a_renamed_listener_keeps_the_path_connected_to_and_the_bound_name_in_either_order():
    # ssh's master binds a temporary name and renames it: the client connects to the final path
    conn = {**H.uconnect(1, 500, "/home/jim/.ssh/cm-prod", "c-1"), "bound": "/home/jim/.ssh/cm-prod.XXXX"}
    acc = {**H.uaccept(1.1, 400, "c-1"), "path": "/home/jim/.ssh/cm-prod.XXXX"}
    for events in ([conn, acc], [acc, conn]):
        r = row(store_with(events), "c-1")
        assert (r["path"], r["bound"]) == ("/home/jim/.ssh/cm-prod", "/home/jim/.ssh/cm-prod.XXXX")


def test_a_resent_connection_is_stored_once_and_counts_as_nothing_new():
    store = store_with(_jim_attaches())
    assert store.write([parse_event(e) for e in _jim_attaches()]) == 0
    assert store.write([parse_event(e) for e in reversed(_jim_attaches())]) == 0
    assert store.counts()["uconns"] == 1


def test_the_same_conn_on_another_boot_or_host_is_another_connection():
    other_boot, other_host = Host("jump", "10.0.0.1", boot="boot-2"), Host("prod", "10.0.0.2")
    store = store_with([H.uconnect(1, 500, SOCK, "c-1"), other_boot.uconnect(1, 500, SOCK, "c-1"),
                        other_host.uconnect(1, 500, SOCK, "c-1")])
    assert store.counts()["uconns"] == 3


@pytest.mark.parametrize("connect_first", [True, False])
def test_the_client_is_the_connects_process_whatever_the_accepts_peer_says(connect_first):
    # SO_PEERCRED as the server's pid namespace saw it may name another pid: the connect's own
    # process is the client, in either arrival order
    events = [H.uconnect(4.9, 501, SOCK, "c-1"), H.uaccept(5, 400, "c-1", peer=(500, 500000))]
    store = store_with(events if connect_first else events[::-1])
    assert row(store, "c-1")["client_proc"] == proc_id(store, 501)


def test_an_accept_alone_names_its_client_by_peer_until_the_connect_says_otherwise():
    store = store_with([H.uaccept(5, 400, "c-1", peer=(500, 500000))])
    assert row(store, "c-1")["client_proc"] == proc_id(store, 500) and row(store, "c-1")["path"] is None
    # the client's own connect wins over the accept's peer (another pid namespace's view, say)
    store.write([parse_event(H.uconnect(4.9, 501, SOCK, "c-1"))])
    assert row(store, "c-1")["client_proc"] == proc_id(store, 501) and row(store, "c-1")["path"] == SOCK


def test_a_path_that_is_not_utf8_is_stored_as_shown_and_still_joins():
    # a socket named with a byte that is not UTF-8 (surrogateescape, as the agent decodes paths)
    connect = H.uconnect(1, 500, "/tmp/s\udcff", "c-\udcfe")
    store = store_with([connect, H.uaccept(1.1, 400, "c-\udcfe"), connect])
    assert store.counts()["uconns"] == 1
    (c,) = store.unix_conns_of(proc_id(store, 500))
    assert (c["path"], c["conn"], store.proc(c["server"]).pid) == ("/tmp/s\\xff", "c-\\xfe", 400)


def test_a_peer_without_its_start_names_no_process():
    ev = H.uconnect(5, 500, SOCK, "c-1")
    ev["peer_pid"] = 400
    store = store_with([ev])
    assert row(store, "c-1")["listener_proc"] is None and row(store, "c-1")["listener_pid"] == 400
    assert store.find_proc("jump", "boot-1", 400, 400000) is None


def test_a_snapshot_connection_is_flagged_until_a_seen_event_of_it_comes():
    snap = [{**H.uconnect(100, 500, SOCK, "c-1", peer=(400, 400000)), "snapshot": True},
            {**H.uaccept(100, 400, "c-1", peer=(500, 500000)), "snapshot": True}]
    store = store_with(snap)
    assert row(store, "c-1")["snapshot"] == 1
    (c,) = store.unix_clients(proc_id(store, 400), T0 + 100, T0 + 100)
    assert c["snapshot"] is True and c["since"] == T0 + 100
    # the first agent's record of the connect arrives late: the real time, no longer a snapshot
    store.write([parse_event(H.uconnect(10, 500, SOCK, "c-1", peer=(400, 400000)))])
    assert row(store, "c-1")["snapshot"] == 0 and row(store, "c-1")["ts_connect"] == T0 + 10


def test_peer_processes_are_the_same_rows_as_their_own_events():
    store = store_with(_jim_attaches() + [H.exec(0, 400, ["tmux", "new", "-d"], uid=1000),
                                          H.exec(9, 500, ["tmux", "attach"], uid=1001)])
    assert store.counts()["procs"] == 2
    r = row(store, "c-1")
    assert store.proc(r["listener_proc"]).pid == 400 and store.proc(r["client_proc"]).pid == 500
    assert store.check() == []


# --- the questions ------------------------------------------------------------------------

def _tmux_day():
    """The tmux server (400, started by ec2-user) and three clients: jim (500) attached 10-20,
    bob (600) attached 15 and still there, carol (700) attached 30-40. Carol's connect was
    recorded without its accept (her listener is the server)."""
    return [
        H.exec(1, 400, ["tmux", "new", "-d"], uid=1000),
        H.exec(9.9, 500, ["tmux", "attach"], uid=1001),
        H.uconnect(10, 500, SOCK, "c-jim", peer=(400, 400000)), H.uaccept(10, 400, "c-jim", peer=(500, 500000)),
        H.exit(20, 500),
        H.uaccept(15, 400, "c-bob", peer=(600, 600000)), H.uconnect(15, 600, SOCK, "c-bob", peer=(400, 400000)),
        H.uconnect(30, 700, SOCK, "c-carol", peer=(400, 400000)), H.exit(40, 700),
        H.uconnect(12, 800, "/run/docker.sock", "c-docker"),        # someone else's server
    ]


def clients_at(store, t0, t1):
    return [(c["conn"], store.proc(c["client"]).pid) for c in store.unix_clients(proc_id(store, 400), T0 + t0, T0 + t1)]


def test_the_clients_of_a_server_are_those_connected_then():
    store = store_with(_tmux_day())
    assert clients_at(store, 16, 16) == [("c-jim", 500), ("c-bob", 600)]       # both attached
    assert clients_at(store, 25, 25) == [("c-bob", 600)]                        # jim has left
    assert clients_at(store, 5, 5) == []                                        # nobody yet
    assert clients_at(store, 35, 35) == [("c-bob", 600), ("c-carol", 700)]     # found by its listener
    assert clients_at(store, 0, 100) == [("c-jim", 500), ("c-bob", 600), ("c-carol", 700)]
    jim, bob = store.unix_clients(proc_id(store, 400), T0 + 16, T0 + 16)
    assert (jim["since"], jim["until"], bob["until"]) == (T0 + 10, T0 + 20, None)
    assert jim["path"] == SOCK and jim["server"] == jim["listener"] == proc_id(store, 400)


def test_a_client_connected_exactly_as_the_window_opens_or_closes_counts():
    store = store_with(_tmux_day())
    assert clients_at(store, 20, 20) == [("c-jim", 500), ("c-bob", 600)]       # jim exits at 20
    assert clients_at(store, 0, 10) == [("c-jim", 500)]


def test_the_connections_of_a_client():
    store = store_with(_tmux_day() + [H.uconnect(50, 600, "@/tmp/dbus-x", "c-bob-2")])
    assert [(c["conn"], c["path"]) for c in store.unix_conns_of(proc_id(store, 600))] == \
        [("c-bob", SOCK), ("c-bob-2", "@/tmp/dbus-x")]
    assert store.unix_conns_of(proc_id(store, 400)) == []


def test_counts_by_host_counts_each_side():
    kinds = store_with(_tmux_day()).counts_by_host()["jump"]
    assert (kinds["uconnect"], kinds["uaccept"]) == (4, 2)


# --- the store's own checks and versions --------------------------------------------------

def test_check_names_a_connection_whose_process_is_missing():
    store = store_with(_jim_attaches())
    assert store.check() == []
    store.db.execute("UPDATE uconns SET server_proc = 9999")
    assert store.check() == ["1 rows of uconns.server_proc name a missing procs row"]


def test_a_version_10_store_gains_unix_connections(tmp_path):
    from whodid.tracer.store import _split_sql
    path = tmp_path / "v10.db"
    conn = sqlite3.connect(path)
    for number, sql in migrations.STEPS:
        if number <= 10:
            for statement in _split_sql(sql):
                conn.execute(statement)
    conn.execute("INSERT INTO hosts (id, name) VALUES (1, 'jump')")
    conn.execute("INSERT INTO boots (id, host, boot) VALUES (1, 1, 'boot-1')")
    conn.execute("INSERT INTO procs (id, boot, pid, start) VALUES (1, 1, 400, 400000)")
    conn.execute("PRAGMA user_version = 10")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST >= 11
    store.write([parse_event(e) for e in _jim_attaches()])
    assert row(store, "c-1")["server_proc"] == 1 and store.check() == []


# --- retention ----------------------------------------------------------------------------

NOW = T0 + 60 * DAY
HORIZON = NOW - 30 * DAY


def _old_session():
    """ec2-user's tmux server (400) started 59 days ago with a pane shell (410) that runs
    delete-cluster yesterday. jim attached 59 days ago for a day (while the shell ran); bob
    attached 58 days ago for an hour to another server (450) that is long gone; carol's ssh
    client (600) asked a master (650) for a session 57 days ago: both long gone."""
    d = DAY
    return [
        H.fork(1 * d, 400, 1), H.exec(1 * d, 400, ["tmux", "new"], uid=1000),
        H.fork(1 * d + 1, 410, 400), H.exec(1 * d + 1, 410, ["-bash"], uid=1000),
        H.fork(59 * d, 420, 410), H.exec(59 * d, 420, ["aws", "eks", "delete-cluster"], uid=1000), H.exit(59 * d + 1, 420),
        H.fork(1 * d + 5, 500, 1), H.exec(1 * d + 5, 500, ["tmux", "attach"], uid=1001),
        H.uconnect(1 * d + 6, 500, SOCK, "c-jim", peer=(400, 400000)), H.uaccept(1 * d + 6, 400, "c-jim"),
        H.exit(2 * d, 500),
        H.fork(2 * d, 450, 1), H.exec(2 * d, 450, ["tmux", "-L", "old"], uid=1002), H.exit(3 * d, 450),
        H.fork(2 * d + 5, 550, 1), H.exec(2 * d + 5, 550, ["tmux", "-L", "old", "attach"], uid=1002),
        H.uconnect(2 * d + 6, 550, "/tmp/tmux-1002/old", "c-bob", peer=(450, 450000)), H.exit(2 * d + 3600, 550),
        H.fork(3 * d, 650, 1), H.exec(3 * d, 650, ["ssh", "-M", "-S", "/tmp/cm", "prod"], uid=1003),
        H.fork(3 * d + 60, 600, 1), H.exec(3 * d + 60, 600, ["ssh", "-S", "/tmp/cm", "prod", "id"], uid=1003),
        H.uconnect(3 * d + 61, 600, "/tmp/cm", "c-carol", peer=(650, 650000)),
        H.uaccept(3 * d + 61, 650, "c-carol", peer=(600, 600000)),
        H.exit(3 * d + 62, 600), H.exit(4 * d, 650),
    ]


def test_retention_keeps_who_was_attached_while_a_kept_command_ran_and_drops_the_rest():
    store = store_with(_old_session())
    store.prune(HORIZON, now=NOW)
    assert {r[0] for r in store.db.execute("SELECT conn FROM uconns")} == {"c-jim"}
    (jim,) = store.unix_clients(proc_id(store, 400), T0 + DAY + 10, T0 + DAY + 10)
    assert store.proc(jim["client"]).pid == 500                 # exited 58 days ago, kept for the shell's trace
    assert store.find_proc("jump", "boot-1", 550, 550000) is None
    assert store.find_proc("jump", "boot-1", 650, 650000) is None
    assert store.check() == []


def test_retention_keeps_the_server_of_a_kept_client():
    store = store_with(_old_session())
    store.pin([proc_id(store, 600)], until=NOW + DAY, reason="incident 7")     # carol's mux client
    store.prune(HORIZON, now=NOW)
    (c,) = store.unix_conns_of(proc_id(store, 600))
    assert store.proc(c["server"]).pid == 650                  # the master it asked, 57 days ago
    assert store.check() == []


def test_a_connection_goes_with_its_client_even_while_its_server_is_kept():
    # jim's client left before the pane shell began: nothing kept needs it, and a row without
    # its client could not say when it ended (it would seem attached for ever)
    events = [e for e in _old_session() if e.get("pid") != 410 and e.get("ppid") != 410 and e.get("pid") != 420]
    events += [H.fork(2 * DAY + 1, 410, 400), H.exec(2 * DAY + 1, 410, ["-bash"], uid=1000),
               H.fork(59 * DAY, 420, 410), H.exec(59 * DAY, 420, ["rm", "-rf", "/data"], uid=1000), H.exit(59 * DAY + 1, 420)]
    store = store_with(events)
    report = store.prune(HORIZON, now=NOW, dry_run=True)
    assert store.counts()["uconns"] == 3
    store.prune(HORIZON, now=NOW)
    assert store.unix_clients(proc_id(store, 400), T0, NOW) == [] and store.counts()["uconns"] == 0
    assert store.find_proc("jump", "boot-1", 500, 500000) is None
    assert store.find_proc("jump", "boot-1", 400, 400000) is not None
    assert store.check() == []
    assert report.rows_removed == 3 + 5                         # the connections, and the execs of the 5 gone processes


def test_an_accept_whose_client_is_unknown_counts_only_in_a_window_it_began_in():
    store = store_with([H.exec(1, 400, ["tmux", "new"], uid=1000), H.uaccept(10, 400, "c-?")])
    server = proc_id(store, 400)
    assert [c["client"] for c in store.unix_clients(server, T0 + 5, T0 + 15)] == [None]
    assert store.unix_clients(server, T0 + 50, T0 + 50) == []       # not attached for ever


# --- over a real collector ----------------------------------------------------------------

def test_a_collector_joins_an_accept_and_its_connect_sent_in_separate_batches(tmp_path):
    import gzip
    import http.client
    import json
    from kit import collector_on
    c, tokens = collector_on(str(tmp_path / "c.db"), hosts=("jump",))
    try:
        def post(events):
            conn = http.client.HTTPConnection(*c.httpd.server_address[:2], timeout=30)
            body = gzip.compress("".join(json.dumps(e) + "\n" for e in events).encode())
            conn.request("POST", "/v1/events", body=body, headers={
                "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip",
                "Authorization": f"Bearer {tokens['jump']}"})
            resp = conn.getresponse()
            out = resp.status, json.loads(resp.read() or b"{}")
            conn.close()
            return out
        accept, connect = _jim_attaches()[1], _jim_attaches()[0]
        assert post([accept])[0] == 200
        assert post([connect, {**connect, "conn": ""}])[0] == 200          # the bad one refused alone
        assert post([connect, accept])[0] == 200                            # a resend
        store = Store.open(c.store_path)
        assert store.counts()["uconns"] == 1
        assert row(store, "c-1")["client_proc"] == proc_id(store, 500) and store.check() == []
        assert [r["field"] for r in store.rejects()] == ["conn"]
    finally:
        c.stop()
