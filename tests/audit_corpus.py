"""Reading the public audit fixtures (tests/fixtures/audit/) the way `whodid import-audit`
reads a log, and describing what an import stored as plain data a test can compare whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from whodid.agent.audit import ImportReport, import_lines
from whodid.tracer import Store, ingest

FIXTURES = Path(__file__).parent / "fixtures" / "audit"
LAUREL = FIXTURES / "laurel"
GO_LIBAUDIT = FIXTURES / "go-libaudit"


def log_lines(path: Path) -> list[str]:
    """A raw log's lines as the CLI reads them (text mode: `\\x1d` before ENRICHED fields is no line end)."""
    with open(path, errors="replace") as fh:
        return list(fh)


def yaml_logs(path: Path) -> dict[str, list[str]]:
    """go-libaudit's aucoalesce files: scenario name -> its raw log lines."""
    doc = yaml.safe_load(path.read_text())
    return {name: [line + "\n" for line in text.split("\n") if line] for name, text in doc["tests"].items()}


@dataclass
class Imported:
    events: list[dict]
    report: ImportReport
    store: Store

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]

    def garbage(self) -> int:
        return self.report.skipped.get("lines that are not audit records", 0)

    def chains(self) -> dict[str, str]:
        """Every process the store holds an exec for, by its newest command: its ancestry as the
        store links it, each process as `pid` or `pid:argv0 argv1...` (its execs joined by ` ; `),
        nearest first, joined by ` < `."""
        out = {}
        for proc, image in self.store.search_commands("", glob=False, since=None, until=None, host_glob=None,
                                                      limit=10_000):
            line, p, seen = [], proc, 0
            while p is not None and seen < 20:
                execs = " ; ".join(" ".join(i.argv) for i in self.store.images(p.id))
                line.append(f"{p.pid}:{execs}" if execs else str(p.pid))
                p = self.store.proc(p.parent) if p.parent else None
                seen += 1
            out[" ".join(image.argv)] = " < ".join(line)
        return out


def import_into(db: Path, lines, host: str = "h", rules=None) -> Imported:
    report = ImportReport()
    events = list(import_lines(lines, host, report, rules=rules))
    store = Store.open(db, create=True)
    stored = ingest(store, events)
    assert stored.rejected == 0, stored.summary()       # every event the importer makes is valid
    return Imported(events, report, store)
