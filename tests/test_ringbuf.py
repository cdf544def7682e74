"""The agent's ring buffer reader against a real BPF ring buffer: a small one, so that a few
thousand records wrap it many times, with records of varying sizes and some discarded."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

# Each getppid() by the test process emits one record: a sequence number and a size-dependent
# payload (1..3 of 64-byte blocks, filled with the sequence's low byte). Every fifth is
# reserved and then discarded, which the reader must step over.
# One branch per record size. Spelled out per size rather than by a C macro: BCC rewrites
# `ring.ringbuf_reserve(...)` calls in the source it is given, and not inside macro bodies.
BRANCH = """
    if (s % 3 == {n}) {{
        struct rec{size} *r = ring.ringbuf_reserve(sizeof(struct rec{size}));
        if (!r)
            return 0;
        r->seq = s;
        __builtin_memset(r->data, s & 0xff, sizeof(r->data));
        if (s % 5 == 4)
            ring.ringbuf_discard(r, 0);
        else
            ring.ringbuf_submit(r, 0);
    }}"""
PROGRAM = ("""
BPF_RINGBUF_OUTPUT(ring, PAGES);
BPF_ARRAY(seq, u64, 1);

struct rec1 { u64 seq; u8 data[64]; };
struct rec2 { u64 seq; u8 data[128]; };
struct rec3 { u64 seq; u8 data[192]; };

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TGID)
        return 0;
    u32 zero = 0;
    u64 *n = seq.lookup(&zero);
    if (!n)
        return 0;
    u64 s = __sync_fetch_and_add(n, 1);""" + "".join(BRANCH.format(n=n, size=n + 1) for n in range(3)) + """
    return 0;
}
""").encode()


def ring(pages: int):
    """PROGRAM loaded with a ring of `pages` pages, and the agent's reader of it: (bpf, reader)."""
    from whodid.agent.bccload import load_bcc
    from whodid.agent.ringbuf import RingReader, usable
    if not usable():
        pytest.skip("the direct reader is used on x86-64 only")
    bpf = load_bcc().BPF(text=PROGRAM.replace(b"PAGES", str(pages).encode())
                         .replace(b"TGID", str(os.getpid()).encode()))
    table = bpf["ring"]
    assert table.max_entries == pages * os.sysconf("SC_PAGESIZE")
    return bpf, RingReader(table.map_fd, table.max_entries)


def test_records_come_out_whole_and_in_order_across_many_wraps():
    bpf, reader = ring(4)
    got: list[bytes] = []
    done = threading.Event()

    def consume():
        while not done.is_set():
            reader.wait(0.05)
            got.extend(reader.read())
        got.extend(reader.read())

    consumer = threading.Thread(target=consume)
    consumer.start()
    total = 6000                             # ~1 MB of records through a 16 KiB buffer
    try:
        for i in range(total):
            os.getppid()
            if i % 40 == 39:
                time.sleep(0.001)            # let the consumer keep up: this is not a loss test
    finally:
        done.set()
        consumer.join()
        reader.close()
        bpf.cleanup()

    seqs = []
    for raw in got:
        (s,) = struct.unpack_from("<Q", raw)
        blocks = s % 3 + 1
        assert len(raw) == 8 + 64 * blocks, (s, len(raw))
        assert raw[8:] == bytes([s & 0xFF]) * (64 * blocks), s
        seqs.append(s)
    assert all(s % 5 != 4 for s in seqs)                      # discarded ones never surface
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kept = [s for s in range(total) if s % 5 != 4]
    missing = set(kept) - set(seqs)
    # a full buffer makes the reserve fail (counted by the agent's BPF as lost); with the
    # pauses above there should be next to none, and the wraps must lose nothing else
    assert len(missing) < total // 100, f"{len(missing)} records missing"
    assert len(seqs) > total // 2


def test_records_left_unread_do_not_end_the_next_wait_at_once():
    """The agent lets a small batch wait in the ring for more (agent/capture.py, BATCH_FILL):
    its wait is edge-triggered, so unread records are no reason to return at once - with a
    level-triggered wait, its loop would spin until the batch was due. This program commits
    with flags 0: the kernel wakes the reader for the first record after it caught up."""
    bpf, reader = ring(16)
    try:
        began = time.monotonic()
        assert reader.wait(0.3) is False                      # nothing came: back after the timeout
        assert time.monotonic() - began >= 0.25 and reader.pending() == 0
        for _ in range(3):
            os.getppid()                                      # the first of them wakes the reader
        began = time.monotonic()
        assert reader.wait(5.0) is True
        assert time.monotonic() - began < 2.0 and reader.pending() > 0
        began = time.monotonic()
        assert reader.wait(0.3) is False                      # still unread, no new wake-up: it waits
        assert time.monotonic() - began >= 0.25
        assert len(reader.read()) == 3 and reader.pending() == 0
    finally:
        reader.close()
        bpf.cleanup()
