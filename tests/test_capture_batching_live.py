"""How the agent reads its ring buffer, on this kernel (agent/capture.py, "Records are read in
batches"; docs/agent.md, "Where the agent's time goes"): an argv record takes the ring space it
used, not the 8 KiB it may need, so a small ring holds many execs in flight; a trickle waits in
the ring for more (one read a flush, not one a poll); a storm is read as soon as the fill is
reached."""

import subprocess
import time

import pytest

from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

WAIT = 3.0          # the capture's batch_wait here: long, so "waited" and "did not wait" are far apart


@pytest.fixture(scope="module")
def cap():
    from whodid.agent.assemble import Assembler
    from whodid.agent.capture import Capture
    from whodid.agent.procfs import ProcFS
    # 64 pages: a 256 KiB ring, a batch at 32 KiB - four argv records, were each reserved whole
    capture = Capture(Assembler("t", "b", 0.0, ProcFS(), lambda u: None, lambda g: None), watch=("/etc",),
                      ringbuf_pages=64, batch_wait=WAIT)
    try:
        yield capture
    finally:
        capture.close()


def marks(events, mark: str) -> list[str]:
    return [e["argv"][1] for e in events if e["kind"] == "exec" and len(e.get("argv", ())) > 1
            and e["argv"][1].startswith(mark)]


def test_a_small_ring_holds_many_execs_unread(cap):
    cap.drain()
    before = cap.lost()
    subprocess.run(["sh", "-c", 'i=0; while [ $i -lt 60 ]; do /bin/true "whodid-held-$i"; i=$((i+1)); done'],
                   check=True)
    # nothing read while they ran: sixty argv records of 8 KiB each would need 480 KiB of a 256 KiB ring
    print(f"{cap.ring.pending() / 60:.0f} bytes of the ring per exec")
    assert cap.ring.pending() < 60 * 2048
    found = marks(cap.drain(), "whodid-held-")
    assert sorted(found) == sorted(f"whodid-held-{i}" for i in range(60))
    assert cap.lost() == before


def test_a_trickle_waits_for_more_and_a_storm_is_read_at_once(cap):
    cap.drain()
    began = time.monotonic()
    subprocess.run(["/bin/true", "whodid-trickle"], check=True)
    events = []
    while not marks(events, "whodid-trickle") and time.monotonic() - began < 10:
        events += cap.poll(100)
    read_at = time.monotonic()
    assert marks(events, "whodid-trickle") == ["whodid-trickle"]
    # read once its batch had waited out `batch_wait` (the last read was at least this long ago)
    assert read_at - began >= WAIT * 0.5, read_at - began

    subprocess.run(["sh", "-c", 'i=0; while [ $i -lt 100 ]; do /bin/true "whodid-storm-$i"; i=$((i+1)); done'],
                   check=True)
    events = []
    while len(marks(events, "whodid-storm-")) < 100 and time.monotonic() - read_at < 10:
        events += cap.poll(100)
    # a hundred execs fill an eighth of the ring: read without waiting for the batch's time
    assert len(marks(events, "whodid-storm-")) == 100
    assert time.monotonic() - read_at < WAIT, time.monotonic() - read_at
