"""The store's caches of ids are bounded (issue 23: a collector's memory climbed 3.6 MB a minute
until a cache emptied at 500,000 entries), and ids stay right after the caches forget them."""

import pytest

from whodid.tracer import Store, ingest
from whodid.tracer import store as store_mod
from whodid.tracer.idcache import IdCache, IdSet

from kit import Host

H = Host("web-01", "10.0.0.1")


def test_an_id_cache_never_holds_more_than_two_generations():
    cache = IdCache(100)
    for i in range(10_000):
        cache[("p", i)] = i
        assert len(cache) <= 200
    assert cache.get(("p", 9_999)) == 9_999
    assert cache.get(("p", 0)) is None                      # long forgotten


def test_what_is_still_used_survives_every_generation():
    cache, seen = IdCache(100), IdSet(100)
    cache["sshd"] = 1
    seen.add(1)
    for i in range(10_000):
        cache[i] = i
        seen.add(i + 10)
        if i % 50 == 0:                                     # a long-lived process, named now and then
            assert cache.get("sshd") == 1 and 1 in seen
    assert cache.get("sshd") == 1 and len(seen) <= 200
    cache.discard("sshd")
    assert "sshd" not in cache


def test_an_id_cache_must_hold_something():
    with pytest.raises(ValueError, match="at least 1"):
        IdCache(0)


def _processes(first: int, n: int, ts: float) -> list[dict]:
    out = []
    for pid in range(first, first + n):
        start = pid * 1000 + 7                              # not a /proc tick: the plain path
        out += [H.fork(ts, pid, 1, start=start, pstart=1007),
                H.exec(ts + 0.001, pid, ["job", "--id", str(pid)], start=start)]
    return out


def test_the_stores_caches_stay_within_their_bound_however_many_processes(monkeypatch):
    monkeypatch.setattr(store_mod, "PROC_IDS_KEPT", 500, raising=False)
    monkeypatch.setattr(store_mod, "CMD_IDS_KEPT", 100, raising=False)
    store = Store.open(":memory:", create=True)
    for batch in range(20):
        assert ingest(store, _processes(10_000 + batch * 250, 250, batch)).accepted == 500
        assert len(store._procs) <= 1000 and len(store._fresh) <= 1000 and len(store._cmds) <= 200
    assert store.counts()["execs"] == 5000


def test_ids_stay_right_after_the_caches_forgot_them(monkeypatch):
    monkeypatch.setattr(store_mod, "PROC_IDS_KEPT", 100, raising=False)
    monkeypatch.setattr(store_mod, "CMD_IDS_KEPT", 50, raising=False)
    store = Store.open(":memory:", create=True)
    ingest(store, _processes(10_000, 2000, 1.0))
    # long after the caches forgot them: each process's exit, a second exec, a connect and the
    # first command lines again - every one must find its process and its command, not make new ones
    later = []
    for pid in range(10_000, 12_000):
        start = pid * 1000 + 7
        later.append(H.exit(50.0, pid, start=start))
        if pid < 10_100:
            later.append(H.exec(40.0, pid, ["job", "--id", str(pid)], start=start))
            later.append({**H.connect(45.0, pid, "10.0.0.9", 443, 40_000 + pid - 10_000), "start": start})
    assert ingest(store, later).rejected == 0
    db = store.db
    assert db.execute("SELECT count(*) FROM procs").fetchone()[0] == 2001           # the 2000 and their parent
    assert db.execute("SELECT count(*) FROM procs WHERE pid >= 10000 AND exit_ts IS NULL").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM procs WHERE pid >= 10000 AND parent IS NULL").fetchone()[0] == 0
    per_proc = dict(db.execute("SELECT p.pid, count(*) FROM execs e JOIN procs p ON p.id = e.proc "
                               "GROUP BY p.pid").fetchall())
    assert per_proc == {pid: (2 if pid < 10_100 else 1) for pid in range(10_000, 12_000)}
    assert db.execute("SELECT count(*) FROM cmds").fetchone()[0] == 2000
    assert db.execute("SELECT count(*) FROM execs e JOIN cmds c ON c.id = e.cmd_id "
                      "WHERE c.cmd != e.cmd").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM conns c JOIN procs p ON p.id = c.proc "
                      "WHERE c.lport != 40000 + p.pid - 10000").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM conns").fetchone()[0] == 100
