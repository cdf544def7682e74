"""Benchmarks are not tests (no timing is asserted), but each must keep running: a tiny
run of every one, so they never rot."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"


def run(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_ingest_http_bench_runs_and_reports_ratios():
    out = run("ingest_http.py", "--agents", "2")
    assert "conditions:" in out and "cores" in out
    assert "| agents -> HTTP -> collector -> store |" in out and "| 1.00 |" in out


def test_render_bench_runs():
    out = run("render.py", "--repeat", "1")
    assert "300" in out


def test_audit_bench_runs():
    import os

    import pytest
    from auditd import missing
    why = missing() or (None if os.geteuid() == 0 else "not root")
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must run the audit benchmark's smoke run, but: {why}")
    if why:
        pytest.skip(why)
    out = run("audit.py", "--execs", "50")
    assert "records/s" in out and "| whodid trace / ausearch walk |" in out


def test_agent_overhead_bench_runs():
    import os

    import pytest
    from auditd import missing
    why = missing() or (None if os.geteuid() == 0 else "not root")
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must run the agent-overhead benchmark's smoke run, but: {why}")
    if why:
        pytest.skip(why)
    out = run("agent_overhead.py", "--execs", "200", "--rounds", "1")
    assert "| whodid agent |" in out and "| auditd |" in out and "targets:" in out
