"""bench/bigstore.py at a tiny size: it builds a store the real way (the store's own schema and
indexes, through ingest), every generated event is there, a second run reuses it, and traces
answer - the known one (the demo's story) rightly. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

from whodid.tracer import Query, Store, Tracer, migrations
from whodid.bot.demo import story as demo
from whodid.config import IdentityConfig

BIGSTORE = Path(__file__).parent.parent / "bench" / "bigstore.py"


def run(*args):
    res = subprocess.run([sys.executable, str(BIGSTORE), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_a_tiny_big_store_is_built_the_real_way_and_answers(tmp_path):
    path = tmp_path / "big.db"
    first = run("--events", "20000", "--days", "2", "--store", str(path), "--build-only")
    assert "bigstore: building" in first.stderr and "events/s, ETA" in first.stderr
    results = [json.loads(line[7:]) for line in first.stdout.splitlines() if line.startswith("RESULT ")]
    assert {r["name"].split(",")[0] for r in results} == {"big store: bytes per event", "big store: build time"}

    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
    # the indexes are the store's own, none missing and none added
    fresh = Store.open(tmp_path / "fresh.db", create=True)
    index_sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
    assert store.db.execute(index_sql).fetchall() == fresh.db.execute(index_sql).fetchall()
    info = json.loads(store.get_meta("bigstore"))
    kinds = info["by_kind"]
    assert info["rejected"] == 0 and info["events"] == sum(kinds.values())
    count = lambda sql: store.db.execute(sql).fetchone()[0]     # noqa: E731
    assert count("SELECT count(*) FROM execs") == kinds["exec"]
    assert count("SELECT count(*) FROM logins") == kinds["login"]
    assert count("SELECT count(*) FROM conns") == kinds["connect"] + kinds["accept"]
    assert count("SELECT count(*) FROM hosts") == info["hosts"]
    for pattern in ("sudo", "kubectl", "aws*"):
        assert count(f"SELECT count(*) FROM execs WHERE cmd GLOB '*{pattern.rstrip('*')}*'") > 10, pattern

    since = info["now"] - 7 * 86400
    ident = IdentityConfig(people=demo.story_people()).identity()
    (tr,) = Tracer(store, ident).find(Query(pattern="delete-cluster", since=since, scope=3, limit=1))
    assert tr.attributed.user == "jim"
    store.close()

    # a fresh process answers the benchmark's questions; a second run finds the store and reuses it
    answer = json.loads(run("--ask", "sudo", "--store", str(path), "--since", repr(since)).stdout)
    assert answer["traces"] == 5 and answer["nodes"] >= 5
    again = run("--events", "20000", "--days", "2", "--store", str(path), "--build-only")
    assert "bigstore: reusing" in again.stderr
