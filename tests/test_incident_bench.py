"""bench/incident.py in a tiny size, so it cannot rot: two people ask at once while the
collector ingests at full rate; every asker gets the picture, and nothing shipped is lost
(every event the agents put in their spools is in the store, counted by kind and host).
No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "incident.py"


def test_two_askers_get_their_pictures_and_nothing_ingested_is_lost(tmp_path):
    out = tmp_path / "incident.json"
    res = subprocess.run([sys.executable, str(BENCH), "--askers", "2", "--waves", "1", "--idle", "5",
                          "--json", str(out), "--keep", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(r["answers"]) == 2
    for a in r["answers"]:
        assert a["acked"] and a["picture"] is not None and a["answer"] is not None, a
    assert {a["pattern"] for a in r["answers"]} == {"delete-cluster", "sudo"}
    assert r["put"] > 100_000 and r["left_in_spools"] == 0 and not r["feeder_errors"]
    assert r["lost"] == {}
    assert "RESULT " in res.stdout and "answers with their picture: 2 of 2" in res.stdout
