"""Read a BPF ring buffer straight from its memory mapping, without a callback per record.

BCC's reader (libbpf's) calls back into Python through ctypes once per record: an exec is
four records, and in an exec storm those callbacks were the largest share of the agent's CPU
after its own Python (bench/agent_overhead.py). Here the records are copied out in one loop.

The layout is the kernel's ABI (kernel/bpf/ringbuf.c; libbpf's ringbuf.c reads it the same):

    page 0, read-write   the consumer position, which we advance
    page 1, read-only    the producer position, which the kernel advances
    pages 2..            the data, mapped twice in a row, so a record that wraps reads whole

Each record starts with an 8-byte header - a u32 length whose bit 31 says "still being
written" and bit 30 "discarded", and a u32 page offset - and records are 8-byte aligned.
Positions are read and written as whole aligned 64-bit words (memoryview casts compile to one
load or store). The ordering this relies on - the length read before the record, the record
copied before the consumer position moves - is what x86-64 gives plain loads and stores, so
`usable()` is true only there; elsewhere the agent keeps BCC's reader.
"""

from __future__ import annotations

import mmap
import platform
import select
from typing import Callable

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8


def usable() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


class RingReader:
    def __init__(self, map_fd: int, size: int):
        """map_fd: a BPF_MAP_TYPE_RINGBUF map; size: its max_entries (bytes, a power of two)."""
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self._consumer_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._consumer = memoryview(self._consumer_map).cast("Q")
        self._producer = memoryview(self._data_map)[:8].cast("Q")
        self._headers = memoryview(self._data_map)[page:].cast("I")
        self._base = page
        self._mask = size - 1
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)

    def wait(self, timeout: float) -> bool:
        """Until the kernel wakes us, or timeout s. When it does is the BPF program's choice, by
        the flags it commits a record with: by default for the first record after we had caught
        up; the agent's (capture.c, `emit`) only once the ring is as full as a batch, or for a
        record that cannot wait. Edge-triggered: records left unread do not end the next wait
        at once - a reader that lets a small batch wait for more must not spin on it. True when
        the kernel woke us (since the last wait), False when the time ran out."""
        return bool(self._epoll.poll(timeout))

    def pending(self) -> int:
        """Bytes the kernel has written that we have not read (headers and discarded records too)."""
        return self._producer[0] - self._consumer[0]

    def read(self, used: Callable[[bytes], int] | None = None, head: int = 0) -> list[bytes]:
        """Every committed record, copied out, in order; then their space is given back.
        used(first `head` bytes) -> how much of a record to copy, for records that may hold
        more than they used."""
        # a wake-up not yet taken is answered by this read: taken now, before the positions are
        # read, so that one for a record this read misses still ends the next wait
        self._epoll.poll(0)
        out = []
        data, headers, mask, base = self._data_map, self._headers, self._mask, self._base
        start = pos = self._consumer[0]
        end = self._producer[0]
        while pos < end:
            offset = pos & mask
            word = headers[offset >> 2]
            if word & BUSY:
                break                                  # still being written: the rest waits too
            size = word & ~(BUSY | DISCARD)
            if not word & DISCARD:
                at = base + offset + HEADER
                length = min(size, used(data[at:at + head])) if used is not None and size > head else size
                out.append(data[at:at + length])
            pos += (size + HEADER + 7) & ~7
        if pos != start:
            self._consumer[0] = pos
        return out

    def close(self) -> None:
        self._epoll.close()
        for view in (self._consumer, self._producer, self._headers):
            view.release()
        self._consumer_map.close()
        self._data_map.close()
