"""The agent's spool: durable, capped with a counted policy, acknowledged batch by batch."""

import json
import sqlite3

import pytest

from whodid.agent.spool import Spool, SpoolError


def ev(i, ts=None, pad=0):
    return {"v": 1, "kind": "exec", "host": "h", "boot": "b", "ts": ts if ts is not None else 1000.0 + i,
            "pid": i, "start": i, "argv": ["echo", str(i) + "x" * pad], "uid": 0, "euid": 0}


def pids(lines):
    return [json.loads(line)["pid"] for line in lines]


def test_what_is_not_acknowledged_survives_a_restart(tmp_path):
    sp = Spool(tmp_path / "s.db", host="h", boot="b")
    assert sp.put([ev(i) for i in range(10)]) == 10
    upto, lines = sp.head(4, 1 << 20)
    assert pids(lines) == [0, 1, 2, 3]
    sp.ack(upto)
    sp.close()                                   # as if the agent were killed here
    sp = Spool(tmp_path / "s.db", host="h", boot="b")
    assert sp.pending() == 6
    assert pids(sp.head(100, 1 << 20)[1]) == [4, 5, 6, 7, 8, 9]


def test_head_respects_the_byte_budget_but_always_gives_one(tmp_path):
    sp = Spool(tmp_path / "s.db")
    sp.put([ev(i, pad=1000) for i in range(5)])
    _, lines = sp.head(100, 2500)
    assert len(lines) == 2
    _, lines = sp.head(100, 10)
    assert len(lines) == 1


def test_full_spool_drops_oldest_counts_and_reports_a_loss(tmp_path, capsys):
    sp = Spool(tmp_path / "s.db", max_bytes=5000, host="h", boot="b")
    sp.put([ev(i, pad=400) for i in range(10)])          # ~560 bytes each: 8 fit
    sp.put([ev(i, pad=400) for i in range(10, 14)])
    assert sp.bytes <= 5000
    kept = pids(sp.head(100, 1 << 20)[1])
    assert kept[-1] == 13 and 0 not in kept              # the newest are kept
    dropped = 14 - len(kept)
    assert sp.dropped_total == dropped
    assert "dropped" in capsys.readouterr().err
    sp.ack(sp.head(100, 1 << 20)[0])                     # shipped: room again
    sp.report_drops()
    (line,) = sp.head(100, 1 << 20)[1]
    loss = json.loads(line)
    assert loss["kind"] == "loss" and loss["count"] == dropped
    assert loss["since"] == 1000.0 and loss["what"] == "agent spool full (drop-oldest)"
    sp.report_drops()                                    # reported once
    assert sp.pending() == 1


def test_drop_newest_keeps_the_oldest(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=3000, policy="drop-newest", host="h", boot="b")
    sp.put([ev(i, pad=400) for i in range(10)])
    kept = pids(sp.head(100, 1 << 20)[1])
    assert kept == list(range(len(kept))) and len(kept) < 10
    assert sp.dropped_total == 10 - len(kept)


def test_drops_are_remembered_across_a_restart(tmp_path):
    sp = Spool(tmp_path / "s.db", max_bytes=2000, host="h", boot="b")
    sp.put([ev(i, pad=400) for i in range(10)])
    n = sp.dropped_total
    sp.close()
    sp = Spool(tmp_path / "s.db", max_bytes=2000, host="h", boot="b")
    sp.ack(sp.head(100, 1 << 20)[0])
    sp.report_drops()
    assert json.loads(sp.head(1, 1 << 20)[1][0])["count"] == n


def test_a_full_disk_drops_and_counts_instead_of_crashing(tmp_path):
    sp = Spool(tmp_path / "s.db", host="h", boot="b")
    sp.db.execute("PRAGMA max_page_count = 8")           # what a full disk looks like to SQLite
    kept = sp.put([ev(i, pad=3000) for i in range(50)])
    assert kept == 0 and sp.dropped_total == 50
    assert sp.pending() == 0


def test_set_aside_keeps_refused_batches_out_of_the_queue(tmp_path):
    sp = Spool(tmp_path / "s.db")
    sp.put([ev(i) for i in range(3)])
    upto, _ = sp.head(2, 1 << 20)
    assert sp.set_aside(upto, "400: not gzip") == 2
    assert pids(sp.head(10, 1 << 20)[1]) == [2]
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT why FROM refused").fetchall()
    assert rows == [("400: not gzip",), ("400: not gzip",)]


def test_unknown_policy_and_unusable_path_are_explained(tmp_path):
    with pytest.raises(SpoolError, match="unknown spool policy 'drop-random'"):
        Spool(tmp_path / "s.db", policy="drop-random")
    (tmp_path / "f").write_text("")
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(tmp_path / "f" / "s.db")


def test_rows_made_in_one_pass_are_each_events_time_and_line(tmp_path, monkeypatch):
    """put() builds its rows in one inlined pass (agent/spool.py _rows, for the agent's CPU):
    each row must still be exactly (_when(ev), event_line(ev)) - the line the collector gets,
    the time drops are counted by - for every kind of `ts` and for lines orjson cannot write."""
    from whodid.agent import spool as spool_mod
    monkeypatch.setattr(spool_mod.time, "time", lambda: 4242.5)
    odd = [ev(1), ev(2, ts=1700000000), ev(3, ts=float("nan")), ev(4, ts=1e13), ev(5, ts=-1.0),
           {**ev(6), "ts": "soon"}, {k: v for k, v in ev(7).items() if k != "ts"}, ev(8, ts=True),
           {**ev(9), "argv": ["cat", "caf\udce9"]},           # not UTF-8: a lone surrogate
           {**ev(10), "pid": 1 << 70}]                         # past 64 bits
    rows, size = spool_mod._rows(odd)
    assert rows == [(spool_mod._when(e), spool_mod.event_line(e)) for e in odd]
    assert size == sum(len(line) for _, line in rows)
    assert [type(ts) for ts, _ in rows] == [float] * len(odd)
    sp = Spool(tmp_path / "s.db")
    assert sp.put(odd) == len(odd)
    assert sp.head(100, 1 << 20)[1] == [line for _, line in rows]
