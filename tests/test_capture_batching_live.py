"""How the agent reads its ring buffer, on this kernel (agent/capture.py, "Records are read in
batches"; docs/agent.md, "Where the agent's time goes"): an argv record takes the ring space it
used, not the 8 KiB it may need, so a ring holds many execs in flight; a trickle waits in the
ring for more (one read a flush, not one a poll); a storm is read as soon as the fill is
reached; a file change to a relative path is read at once, while its process still runs; and
a heartbeat mark never reaches the record before the records made before it."""

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kit import file_agent, stop_file_agent
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

WAIT = 3.0          # the capture's batch_wait here: long, so "waited" and "did not wait" are far apart


@pytest.fixture(scope="module")
def watched():
    with tempfile.TemporaryDirectory(prefix="whodid-batching-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def cap(watched):
    from whodid.agent.assemble import Assembler
    from whodid.agent.capture import Capture
    from whodid.agent.procfs import ProcFS
    watch = (str(watched),)
    # 256 pages: a 1 MiB ring, a batch at 128 KiB - sixteen argv records, were each reserved whole
    capture = Capture(Assembler("t", "b", 0.0, ProcFS(), lambda u: None, lambda g: None, watch=watch),
                      watch=watch, ringbuf_pages=256, batch_wait=WAIT)
    try:
        yield capture
    finally:
        capture.close()


def marks(events, mark: str) -> list[str]:
    return [e["argv"][1] for e in events if e["kind"] == "exec" and len(e.get("argv", ())) > 1
            and e["argv"][1].startswith(mark)]


def quietly(check, tries: int = 3) -> bool:
    """True when `check()` holds in one of `tries` attempts. The capture sees the whole host:
    another process's burst of execs, or a file written by a relative path anywhere, may wake
    it or fill its batch in one attempt; not, on a test machine, in three in a row."""
    return any(check() for _ in range(tries))


def test_a_ring_holds_many_execs_unread(cap):
    cap.drain()
    before = cap.lost()
    subprocess.run(["sh", "-c", 'i=0; while [ $i -lt 150 ]; do /bin/true "whodid-held-$i"; i=$((i+1)); done'],
                   check=True)
    # nothing read while they ran: 150 argv records of 8 KiB each would need 1.2 MB of a 1 MiB ring
    assert cap.ring.pending() < 150 * 2048
    found = marks(cap.drain(), "whodid-held-")
    assert sorted(found) == sorted(f"whodid-held-{i}" for i in range(150))
    assert cap.lost() == before


def test_a_trickle_waits_for_more_and_a_storm_is_read_at_once(cap):
    def waits() -> bool:
        cap.drain()
        subprocess.run(["/bin/true", "whodid-trickle"], check=True)
        return marks(cap.poll(0), "whodid-trickle") == []              # not due: it waits

    assert quietly(waits)
    began = time.monotonic()
    events = []
    while not marks(events, "whodid-trickle") and time.monotonic() - began < 10:
        events += cap.poll(100)
    read_at = time.monotonic()
    assert marks(events, "whodid-trickle") == ["whodid-trickle"]        # and then it came

    subprocess.run(["sh", "-c", 'i=0; while [ $i -lt 300 ]; do /bin/true "whodid-storm-$i"; i=$((i+1)); done'],
                   check=True)
    events = []
    while len(marks(events, "whodid-storm-")) < 300 and time.monotonic() - read_at < 10:
        events += cap.poll(100)
    # three hundred execs fill an eighth of the ring: read without waiting for the batch's time
    assert len(marks(events, "whodid-storm-")) == 300
    assert time.monotonic() - read_at < WAIT, time.monotonic() - read_at


def test_the_kernel_wakes_the_agent_for_a_full_batch_or_a_record_that_cannot_wait(cap, watched):
    """capture.c's `emit`: on a trickle the agent is not woken at all (its own timers read the
    batch: before, the first record after each read woke it, and it then looked at the fill
    every 10 ms); a burst wakes it once the ring holds a batch; a file change to a relative
    path wakes it at once."""
    def not_woken() -> bool:
        cap.drain()                                    # (and any wake-up still queued from before)
        subprocess.run(["/bin/true", "whodid-quiet"], check=True)
        began = time.monotonic()
        return cap.ring.wait(1.5) is False and time.monotonic() - began >= 1.4 and \
            0 < cap.ring.pending() < cap._batch_bytes

    assert quietly(not_woken)                          # one exec: no wake-up

    burst = subprocess.Popen(["sh", "-c", 'i=0; while [ $i -lt 2000 ]; do /bin/true "whodid-burst-$i"; '
                                          'i=$((i+1)); done'])
    try:
        began = time.monotonic()
        assert cap.ring.wait(30) is True
        woken = time.monotonic() - began
        assert cap.ring.pending() >= cap._batch_bytes and woken < 10, woken    # the fill ended it
    finally:
        burst.wait()
    cap.drain()

    began = time.monotonic()
    writer = subprocess.Popen(["sh", "-c", f'cd {watched} && exec sh -c ": > woken-by; sleep 3"'])
    try:
        seen = False
        while not seen and time.monotonic() - began < 10:
            # each wake-up is read (another process's may come first), and only then is waited again
            assert cap.ring.wait(10 - (time.monotonic() - began)) is True
            seen = any(e["kind"] == "file" and e["path"] == str(watched / "woken-by")
                       for e in cap.poll(0, now=True))
        assert seen and time.monotonic() - began < 3.0      # woken while the writer still runs
    finally:
        writer.wait()


def test_a_storm_of_relative_path_writes_is_read_in_batches_not_per_record(cap, tmp_path):
    """Every file change by a relative path reaches user space (its folder is known only from
    /proc) and wakes it; any user can make thousands a second, anywhere. The agent reads them
    at most every READ_GAP: not once per record."""
    from whodid.agent.capture import READ_GAP
    reads, read_ring = [], cap._read_ring

    def counted():
        reads.append(time.monotonic())
        read_ring()

    cap.drain()
    storm = subprocess.Popen(["sh", "-c", f'cd {tmp_path} && i=0; while [ $i -lt 20000 ]; do : > f; '
                                          'i=$((i+1)); done'])
    cap._read_ring = counted
    try:
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            cap.poll(200)
        took = time.monotonic() - began
    finally:
        del cap._read_ring
        storm.kill()
        storm.wait()
    cap.drain()
    assert reads, "the storm woke nothing"
    assert len(reads) <= took / READ_GAP + 3, (len(reads), took)


def test_asked_for_now_every_record_there_is_comes(cap):
    def comes_only_when_asked() -> bool:
        cap.drain()
        subprocess.run(["/bin/true", "whodid-now"], check=True)
        return marks(cap.poll(0), "whodid-now") == [] and \
            marks(cap.poll(0, now=True), "whodid-now") == ["whodid-now"]

    assert quietly(comes_only_when_asked)


def test_a_relative_file_change_is_read_while_its_process_runs(cap, watched):
    """Its path is resolved against the process's cwd in /proc: had it waited a batch, the
    process would be gone, its cwd taken from what the agent knew (where it was started, not
    the watched folder it moved to) and the change dropped as outside the watch."""
    cap.drain()
    began = time.monotonic()
    writer = subprocess.Popen(["sh", "-c", f'cd {watched} && exec sh -c ": > relative-file; sleep 1.5"'])
    try:
        events = []
        while not any(e["kind"] == "file" for e in events) and time.monotonic() - began < 10:
            events += cap.poll(100)
    finally:
        writer.wait()
    files = [e for e in events if e["kind"] == "file"]
    assert [e["path"] for e in files] == [str(watched / "relative-file")]
    assert time.monotonic() - began < WAIT


def test_a_heartbeat_never_goes_out_before_the_records_made_before_it(tmp_path):
    """The agent's marks say up to when it was running: after a crash, an outage is counted from
    the last mark stored. A mark written while records made before it still waited in the ring
    would let such a crash lose them without the outage covering them. Here records wait up to
    a second (a flush) and a mark comes every 0.7 s, out of step with the reads; the agent
    writes JSON lines, in the order it writes them out: each exec is out before any mark made
    after it ran."""
    import json
    agent = file_agent(tmp_path, "beat", "--flush-interval", "1", "--heartbeat", "0.7")
    done = {}
    try:
        for i in range(10):
            time.sleep(0.15 * (i % 5))
            subprocess.run(["/bin/true", f"whodid-beat-{i}"], check=True)
            done[f"whodid-beat-{i}"] = time.time()
        time.sleep(2.5)
    finally:
        stop_file_agent(agent)
    lines = [json.loads(line) for line in (tmp_path / "beat.jsonl").read_text().splitlines()]
    order = {}
    for n, ev in enumerate(lines):
        if ev["kind"] == "exec" and len(ev["argv"]) > 1 and ev["argv"][1] in done:
            order[ev["argv"][1]] = n
    assert sorted(order) == sorted(done)
    alive = [(n, ev["ts"]) for n, ev in enumerate(lines) if ev["kind"] == "host" and ev.get("state") == "alive"]
    assert len(alive) >= 5
    early = [(mark, n) for mark, at in done.items() for n, ts in alive if ts > at and n < order[mark]]
    assert early == []


def test_a_capture_that_cannot_load_keeps_no_ring_open(watched):
    """The loader makes the ring before the program (capture.c, RING): a program that does not
    load - here it does not compile - must not leave the ring's fd, its memory
    (locked, 4 MiB by default) or anything else behind, start after failed start."""
    import os

    from whodid.agent.assemble import Assembler
    from whodid.agent.capture import Capture, CaptureError
    from whodid.agent.procfs import ProcFS
    watch = (str(watched),)
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(CaptureError, match="could not load the BPF program"):
            Capture(Assembler("t", "b", 0.0, ProcFS(), lambda u: None, lambda g: None, watch=watch),
                    watch=watch, ringbuf_pages=64, faults=("PIDNS_FILTER=(",))
    assert set(os.listdir("/proc/self/fd")) == before
