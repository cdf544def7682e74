"""Retention: old facts go, except what a newer command's trace walks through."""

import pytest

from kit import T0, Host, ssh_session, store_with

from whodid.tracer import Identity, Person, Query, Store, Tracer, ingest

DAY = 86400.0
NOW = T0 + 60 * DAY
HORIZON = NOW - 30 * DAY
JIM = "SHA256:jim"
A, B = Host("jump", "10.0.0.1"), Host("prod", "10.0.0.2")
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM,)),))


def fleet_events() -> list[dict]:
    """jim's session from 59 days ago hops to prod, where, yesterday, it deletes the cluster.
    The jump host has rebooted since (boot-2), so its agent never saw the old processes exit."""
    ev = ssh_session(A, 1 * DAY, 200, "jim", 1001, "192.168.1.5", 51000, key_fp=JIM)
    ev += [A.fork(DAY + 10, 210, 201), A.exec(DAY + 10.1, 210, ["ssh", "ec2-user@10.0.0.2"], uid=1001, auid=1001),
           A.connect(DAY + 10.2, 210, "10.0.0.2", 22, 40000)]
    ev += ssh_session(B, DAY + 10.5, 300, "ec2-user", 1000, "10.0.0.1", 40000)
    ev += [B.fork(59 * DAY, 310, 301), B.exec(59 * DAY + 0.1, 310, ["aws", "eks", "delete-cluster"], uid=1000,
                                                auid=1000, ses=300), B.exit(59 * DAY + 1, 310)]
    # old and finished: gone after the prune
    ev += [A.exec(2 * DAY, 400, ["/usr/bin/logrotate"]), A.exit(2 * DAY + 1, 400)]
    ev += [B.fork(3 * DAY, 500, 301), B.exec(3 * DAY + 0.1, 500, ["ls", "/tmp"], uid=1000, auid=1000),
           B.exit(3 * DAY + 0.2, 500)]
    # the jump host's new boot
    a2 = Host("jump", "10.0.0.1", boot="boot-2")
    ev += [a2.exec(58 * DAY, 10, ["/usr/sbin/cron"], snapshot=True)]
    ev += [{"v": 1, "kind": "loss", "host": "prod", "boot": "boot-1", "ts": T0 + 4 * DAY, "since": T0 + 4 * DAY - 60,
            "count": 3, "what": "ring buffer full"}]
    return ev


def summary(store: Store):
    (tr,) = Tracer(store, IDENT).find(Query(pattern="delete-cluster", limit=1))
    return tr.attributed.user, [(s.host, s.command, s.edge) for s in tr.chain]


def commands(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT cmd FROM execs")}


def test_prune_keeps_what_the_trace_walks_and_nothing_else():
    store = store_with(fleet_events())
    before = summary(store)
    assert before[0] == "jim" and [h for h, _, e in before[1] if e == "ssh"] == ["prod"]
    report = store.prune(HORIZON, now=NOW)
    assert summary(store) == before                       # the same answer after the prune
    left = commands(store)
    assert "/usr/bin/logrotate" not in left and "ls /tmp" not in left
    assert "ssh ec2-user@10.0.0.2" in left                 # kept only because prod's session came from it
    assert report.procs_removed == 2 and report.rows_removed == 2 + 1    # their execs, and the old loss
    assert store.losses(["prod"], T0, NOW) == []


def test_dry_run_changes_nothing():
    store = store_with(fleet_events())
    counts = store.counts()
    report = store.prune(HORIZON, now=NOW, dry_run=True)
    assert report.dry_run and report.procs_removed == 2 and store.counts() == counts
    assert report.summary().startswith("would remove 2 processes")


def test_a_pin_keeps_an_old_process_and_its_chain_until_it_expires():
    store = store_with(fleet_events())
    (ls,) = [r[0] for r in store.db.execute("SELECT proc FROM execs WHERE cmd = 'ls /tmp'")]
    store.pin([ls], until=NOW + DAY, reason="incident INC-1")
    store.prune(HORIZON, now=NOW)
    assert "ls /tmp" in commands(store)
    (tr,) = Tracer(store, IDENT).find(Query(pattern="ls /tmp", limit=1))
    assert tr.attributed.user == "jim"
    store.prune(HORIZON + 2 * DAY, now=NOW + 2 * DAY)        # the incident's pin has expired
    assert "ls /tmp" not in commands(store)
    assert store.pins() == []


def test_a_store_connection_with_cached_ids_survives_a_prune_elsewhere(tmp_path):
    path = str(tmp_path / "s.db")
    one = Store.open(path, create=True)
    ingest(one, fleet_events())
    other = Store.open(path)
    ingest(other, [A.exec(2 * DAY + 0.5, 400, ["/usr/bin/logrotate", "--again"])])   # caches logrotate's id
    one.prune(HORIZON, now=NOW)                                                      # deletes that process
    ingest(other, [A.exec(2 * DAY + 0.7, 400, ["/usr/bin/logrotate", "--late"])])    # arrives late
    dangling = other.db.execute("SELECT count(*) FROM execs WHERE proc NOT IN (SELECT id FROM procs)").fetchone()[0]
    assert dangling == 0


def test_the_trace_still_names_jim_when_the_session_login_is_all_that_links():
    # prod's agent lost the fork of the deleting process: only its audit session ties it to
    # the login, and retention must keep that login too
    events = [e for e in fleet_events() if not (e["kind"] == "fork" and e.get("pid") == 310)]
    store = store_with(events)
    before = summary(store)
    store.prune(HORIZON, now=NOW)
    assert summary(store) == before and before[0] == "jim"


def test_lost_events_total_never_decreases_when_retention_prunes_loss_records(tmp_path):
    """whodid_agent_lost_events_total is a Prometheus counter: pruning the loss rows it was summed
    from must not lower it (a drop reads as a counter reset, and the losses vanish from history)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from whodid.collector.server import Collector

    db = str(tmp_path / "c.db")
    store_with(fleet_events(), db).close()            # prod lost 3 records 56 days ago
    store = Store.open(db)
    ingest(store, [{"v": 1, "kind": "loss", "host": "prod", "boot": "boot-1", "ts": NOW - DAY, "since": NOW - DAY - 9,
                    "count": 5, "what": "ring buffer full"}])
    store.close()
    c = Collector(db, "127.0.0.1", 0).start()

    def lost():
        text = urllib.request.urlopen(c.url + "/metrics", timeout=30).read().decode()
        return {s.labels["host"]: s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples if s.name == "whodid_agent_lost_events_total"}
    try:
        assert lost() == {"prod": 8}
        report = c.writer.call(lambda s: s.prune(HORIZON, now=NOW)).result()
        assert report.rows_removed >= 1                          # the old loss row is gone...
        assert lost() == {"prod": 8}                             # ...and its count is still there
        c.writer.call(lambda s: s.prune(NOW, now=NOW + DAY)).result()       # and again: no double counting
        assert lost() == {"prod": 8}
    finally:
        c.stop()


@pytest.mark.xfail(strict=True, reason="a loss record re-sent after retention pruned it is counted again: the "
                   "UNIQUE (host, since, ts) that stops a resend is gone with the row. Telling a resend from a "
                   "first delivery by a long-offline agent needs the pruned keys or a per-host mark (which "
                   "would undercount the latter); left for a decision")
def test_a_loss_record_resent_after_retention_pruned_it_is_not_counted_twice():
    """Found attacking issue 16 item 10: `whodid ingest` of the same old file twice, or an agent
    re-sending a batch whose answer it never got, after a prune."""
    old = {"v": 1, "kind": "loss", "host": "prod", "boot": "boot-1", "ts": NOW - 40 * DAY,
           "since": NOW - 40 * DAY - 9, "count": 7, "what": "ring buffer full"}
    store = store_with(fleet_events() + [old])
    total = store.lost_by_host()["prod"]
    store.prune(HORIZON, now=NOW)
    assert store.lost_by_host()["prod"] == total
    ingest(store, [old])                                   # the same record again
    store.prune(HORIZON + DAY, now=NOW + DAY)
    assert store.lost_by_host()["prod"] == total
