"""Bytes per event at rest, over the demo fleet (22 hosts, 4 days): the store after ingest and a
checkpoint of its write-ahead log, divided by the events fed in. As a reference in the same run:
the same events as the JSON lines an agent ships (uncompressed).

Target: under 150 bytes/event.   `.venv/bin/python bench/storage.py`
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from whodid.bot.demo import story as demo
from whodid.tracer import Store, ingest

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402


def main() -> None:
    fleet, _ = demo.build(time.time())
    events = fleet.events()
    raw = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in events)
    with tempfile.TemporaryDirectory(prefix="whodid-bench-storage-") as tmp:
        store = Store.open(Path(tmp) / "s.db", create=True)
        ingest(store, events)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = store.size()
        store.close()
    n = len(events)
    print(f"conditions: the demo fleet, {n:,} events, 22 hosts, 4 days; {os.cpu_count()} cores")
    print()
    print("| form | bytes | bytes/event |")
    print("|---|---:|---:|")
    print(f"| JSON lines as shipped (reference) | {raw:,} | {raw / n:.0f} |")
    print(f"| the store at rest | {size:,} | {size / n:.0f} |")
    result("store bytes per event", size / n, 150, "lower", "B")


if __name__ == "__main__":
    main()
