"""The store's interface stays narrow: SQLite's Store implements every method of the
EventStore Protocol with the same parameters, and nothing outside the store reaches past it."""

import inspect
import re
from pathlib import Path

from whodid.tracer.storage import EventStore
from whodid.tracer.store import Store

ROOT = Path(__file__).parent.parent
PROTOCOL = {name for name, _ in inspect.getmembers(EventStore, inspect.isfunction) if not name.startswith("_")}


def test_store_implements_the_protocol_exactly():
    for name in PROTOCOL:
        assert hasattr(Store, name), f"Store lacks {name}"
        want = list(inspect.signature(getattr(EventStore, name)).parameters)
        have = list(inspect.signature(getattr(Store, name)).parameters)
        assert want == have, (name, want, have)


def test_callers_use_only_the_protocol():
    # Everything except the SQLite implementation itself (store.py, its retention SQL, its
    # migrations) must go through the Protocol: no raw SQL, no private methods.
    own = {"store.py", "retention.py", "migrations.py", "storage.py"}
    files = [p for d in ("tracer", "collector", "bot") for p in (ROOT / d).rglob("*.py") if p.name not in own]
    used = {}
    for path in files:
        for m in re.finditer(r"\bstore\.([A-Za-z_]\w*)\b(?!\s*=)", path.read_text()):
            used.setdefault(m.group(1), set()).add(path.name)
    config_fields = {"retention", "retention_seconds", "prune_every", "path"}   # cfg.store.* are settings
    unknown = {k: v for k, v in used.items() if k not in PROTOCOL | config_fields}
    assert unknown == {}, unknown
