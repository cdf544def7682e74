"""Benchmarks are not tests (no timing is asserted), but each must keep running: bench/run.py
at its quick sizes runs every one and writes the report, so none of them rots."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"


def test_every_benchmark_runs_and_the_report_is_written(tmp_path):
    from auditd import missing
    privileged = not missing() and os.geteuid() == 0
    if not privileged and os.environ.get("CI"):
        pytest.fail(f"CI must run every benchmark, but: {missing() or 'not root'}")
    out = tmp_path / "REPORT.md"
    res = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    report = out.read_text()
    for title in ("Agent overhead on an exec storm", "Ingest", "Storage", "Trace latency on a large store",
                  "Render", "Slack end to end", "Under an incident's load", "auditd logs"):
        assert f"## {title}" in report
    if privileged:
        assert "did not run" not in report, report
    for figure in ("store bytes per event", "ingest over HTTP vs bare executemany", "render, 300-node trace",
                   "Slack end to end p95", "trace p95, scope 0", "incident: ingest under askers / idle"):
        assert f"| {figure}" in report
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
