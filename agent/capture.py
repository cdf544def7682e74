"""Load capture.c into the kernel with BCC and turn its ring buffer into schema events.

The Capture object is the edge between the kernel and the rest of the agent: `poll()`
hands decoded, assembled events to a callback in batches, `lost()` says how many
records the ring buffer had to drop, and `over_budget()` how many connection records each uid
was refused by its budget (capture.c, the connection budget). TCP connections over the budget are
counted in the kernel instead (capture.c, aggregation); `poll()` adds their events once each
minute is over, and `drain()` at stop all that are left.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import btf, decode, ringbuf
from .assemble import Assembler, kernel_prefixes
from .bccload import load_bcc
from whodid.config import ConnectionBudget, UnixSockets

SOURCE = Path(__file__).with_name("capture.c")

ARGS_FIXED = decode.HDR.size + decode.ARGS_HEAD.size


# Records are read in batches. Decoding and assembling are the agent's Python; run a few dozen
# times a second on a trickle they cost about twice what they cost per record in a storm (the
# interpreter's code and data are cold each time: bench/soak.py, 300 execs/s, 114 us per exec
# read every 20 ms, 84 every 200 ms). So records wait in the ring until it holds an eighth of
# its size (a storm: milliseconds) or until they have waited BATCH_WAIT (a trickle: once a
# second, the agent's flush; Capture's `batch_wait` when its flush is sooner). The kernel wakes
# the agent when a record takes the ring past the eighth (capture.c, `emit`), so neither a
# storm's first records nor a burst from idle wait for a timer; on a trickle nothing wakes it
# but its own timers (the loop turns every poll, 200 ms: DNS answers drained, stop and flushes
# looked at). A record is ~100-800 bytes (an argv record the bytes it used), so the default
# 4 MiB ring holds thousands of execs.
# Not waited for: a file change to a relative path (resolved against its process's cwd in
# /proc, which only a process still running has): its record wakes the agent, which reads it.
READ_GAP = 0.02             # seconds at least between reads the kernel woke us for, short of a full batch
BATCH_FILL = 8              # a batch is full at 1/BATCH_FILL of the ring
BATCH_WAIT = 1.0            # seconds records may wait in the ring for more to come
AGG_SWEEP = 1.0             # seconds between looks for aggregated connections whose minute is over
# a connect still waiting this long had every moment that records it skipped (capture.c): SYNs
# retried at the defaults (tcp_syn_retries 6) give up after 127 s
STALE_CONNECT_NS = 180_000_000_000
ORPHAN_SWEEP = 60.0         # ... and between walks of the kernel's whole table for keys nobody knows


def give_back_heap() -> None:
    """Return the C heap's free memory to the system. Compiling the BPF program (clang and LLVM,
    in this process) leaves ~40 MB of it freed but kept by malloc, resident for the agent's whole
    life: trimmed once after the compile, the agent holds ~160 MB instead of ~200 (issue 23).
    glibc's malloc_trim; a libc without it has nothing to do here."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


BPF_MAP_TYPE_RINGBUF = 27   # include/uapi/linux/bpf.h


class CaptureError(RuntimeError):
    pass


def argv_used(head: bytes) -> int:
    """How much of a record to copy, from its first ARGS_FIXED bytes: an argv record's header
    says the length it used (capture.c sends no more, but a perf buffer pads); every other
    record is taken whole."""
    if decode.HDR.unpack_from(head)[5] == decode.EV_EXEC_ARGS:
        return ARGS_FIXED + decode.ARGS_HEAD.unpack_from(head, decode.HDR.size)[3]
    return 1 << 30


def prefix_check(prefix: str | bytes, words: tuple[str, ...] = ("w0", "w1", "w2")) -> str:
    """C for `bytes start with prefix` over their first 64-bit words (8 bytes each, read
    little-endian, as many as `words` names)."""
    raw = (prefix.encode() if isinstance(prefix, str) else prefix)[:8 * len(words)]
    terms = []
    for i, word in enumerate(words):
        chunk = raw[i * 8:(i + 1) * 8]
        if chunk:
            mask = (1 << (8 * len(chunk))) - 1
            terms.append(f"({word} & 0x{mask:x}ULL) == 0x{int.from_bytes(chunk, 'little'):x}ULL")
    return "(" + " && ".join(terms) + ")"


def unix_path_bytes(prefix: str) -> bytes:
    """A configured unix-socket prefix as sun_path bytes: `@name` is the abstract name, whose
    first byte is NUL."""
    return b"\0" + prefix[1:].encode() if prefix.startswith("@") else prefix.encode()


def comm_check(name: str) -> str:
    """C for `the task's comm is name`, or name and a colon after it (tmux calls its processes
    `tmux: client` and `tmux: server`), over the comm's two words c0, c1."""
    raw, words = name.encode()[:15], ("c0", "c1")
    return "(" + prefix_check(raw + b"\0", words) + " || " + prefix_check(raw + b":", words) + ")"


def program_text(watch: tuple[str, ...], unix_prefixes: tuple[str, ...] = (), unix_comms: tuple[str, ...] = ()) -> str:
    """capture.c with the loader's substitutions (see its header)."""
    checks = "".join(f" || {prefix_check(p)}" for p in kernel_prefixes(watch))
    unix = "".join(f" || {prefix_check(unix_path_bytes(p))}" for p in sorted(set(unix_prefixes)) if p)
    comms = "".join(f" || {comm_check(c)}" for c in sorted(set(unix_comms)) if c)
    return (SOURCE.read_text().replace("WATCH_PREFIXES", checks).replace("UNIX_PREFIXES", unix).replace("UNIX_COMMS", comms))


def budget_flags(per_second: int, burst: int) -> list[str]:
    """The compiler flags for a connection budget of per_second records a second per uid, up to
    burst saved (capture.c); none when per_second is 0 (unlimited). BUDGET_FULL_NS: the time an
    empty bucket takes to fill, the most a refill needs to count."""
    if per_second <= 0:
        return []
    full_ns = -(-burst * 1_000_000_000 // per_second)
    return [f"-DBUDGET_PER_SECOND={per_second}LL", f"-DBUDGET_BURST={burst}LL", f"-DBUDGET_FULL_NS={full_ns}LL"]


def own_pid_namespace() -> tuple[int, int]:
    """(device, inode) of this process's pid namespace, as bpf_get_ns_current_pid_tgid wants."""
    st = os.stat("/proc/self/ns/pid")
    return st.st_dev, st.st_ino


def has_ringbuf() -> bool:
    """The BPF ring buffer came in Linux 5.8."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (5, 8)


def make_ring(bcc, size: int) -> int:
    """A BPF ring buffer of `size` bytes (a power-of-two number of pages); its fd."""
    lib = bcc.libbcc.lib
    lib.bcc_create_map.restype = ctypes.c_int
    lib.bcc_create_map.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int]
    fd = lib.bcc_create_map(BPF_MAP_TYPE_RINGBUF, b"events", 0, 0, size, 0)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        pages = size // mmap.PAGESIZE
        if err in (errno.EPERM, errno.EACCES):
            hint = ("the agent needs root, or CAP_BPF and CAP_PERFMON: a systemd unit's CapabilityBoundingSet= "
                    "must keep both (deploy/systemd/whodid-agent.service)")
        elif pages <= 0 or pages & (pages - 1):
            hint = "--ringbuf-pages must be a power of two"
        else:
            hint = "a smaller --ringbuf-pages may fit"
        why = os.strerror(err)
        raise CaptureError(f"could not make the BPF ring buffer of {pages} pages ({why}); {hint}. "
                           "Run `whodid-agent doctor`.")
    return fd


def boot_epoch() -> float:
    """Epoch seconds at boot, to turn CLOCK_BOOTTIME stamps into wall-clock times."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def take(table, key):
    """(count, first, last) of an aggregated key, taken out of the kernel's table in one step
    (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps since Linux 5.14): a connection counted between a
    lookup and a delete would be lost, and one counted after the delete would make the key anew,
    its first record unread at stop. None when the key is not there. Older kernels: lookup, then
    delete."""
    from bcc.libbcc import lib      # noqa: PLC0415 (BCC is loaded by Capture before this runs)
    leaf = table.Leaf()
    ret = lib.bpf_lookup_and_delete(table.map_fd, ctypes.byref(key), ctypes.byref(leaf))
    if ret == 0:
        return leaf.count, leaf.first, leaf.last
    if -ret == errno.ENOENT or ctypes.get_errno() == errno.ENOENT:
        return None
    try:
        v = table[key]
        del table[key]
    except KeyError:
        return None
    return v.count, v.first, v.last


TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")    # where tracefs is mounted, newest first


def field_offset(fmt: str, field: str) -> int | None:
    """A field's offset in a tracepoint's record, from tracefs's `format` text; None if absent."""
    m = re.search(rf"field:[^;]*\b{re.escape(field)};\s*offset:(\d+);", fmt)
    return int(m.group(1)) if m else None


def tracepoint_field_offset(event: str, field: str) -> int | None:
    """`field`'s offset in tracepoint `event` (category/name) as the running kernel lays it out."""
    for root in TRACEFS:
        try:
            return field_offset(Path(root, "events", event, "format").read_text(), field)
        except OSError:
            continue
    return None


class Capture:
    """`offsets`: where the running kernel keeps what capture.c reads from task_struct (read from
    its BTF when not given; btf.NONE reads nothing). `note`: one line for people when some of it
    is missing, saying what the agent does instead; None when all is there."""

    def __init__(self, assembler: Assembler, watch: tuple[str, ...], ringbuf_pages: int = 1024,
                 pidns: tuple[int, int] | None = None, buffer: str = "auto",
                 offsets: btf.KernelOffsets | None = None, unix_prefixes: tuple[str, ...] | None = None,
                 unix_comms: tuple[str, ...] | None = None, budget: ConnectionBudget | None = None,
                 faults: tuple[str, ...] = (), batch_wait: float = BATCH_WAIT):
        if os.geteuid() != 0:
            raise CaptureError("the agent needs root (or CAP_BPF and CAP_PERFMON) to load its BPF program")
        bcc = load_bcc()
        if buffer == "ringbuf" and not ringbuf.usable():
            raise CaptureError("--buffer ringbuf: the agent reads the ring buffer only on x86-64; use --buffer perf")
        self.perf = buffer == "perf" or (buffer == "auto" and not (has_ringbuf() and ringbuf.usable()))
        flags = ["-Wno-macro-redefined", "-Wno-unused-value", "-Wno-visibility",
                 f"-DPIDNS_FILTER={1 if pidns else 0}", f"-DUSE_PERFBUF={1 if self.perf else 0}"]
        self.budget = ConnectionBudget() if budget is None else budget
        flags += budget_flags(self.budget.per_second, self.budget.burst)
        flags += [f"-D{fault}" for fault in faults]     # tests: capture.c's FAULT_* (its header)
        ret_offset = tracepoint_field_offset("syscalls/sys_exit_connect", "ret")
        if ret_offset is not None:
            flags.append(f"-DCONNECT_RET_OFF={ret_offset}")
        if pidns:
            flags += [f"-DPIDNS_DEV={pidns[0]}ULL", f"-DPIDNS_INO={pidns[1]}ULL"]
        self.note: str | None = None
        if offsets is None:
            offsets, self.note = btf.running_kernel()
        defaults = UnixSockets()
        text = program_text(watch, tuple(defaults.prefixes if unix_prefixes is None else unix_prefixes),
                            tuple(defaults.comms if unix_comms is None else unix_comms))
        # the ring buffer is made here, not by BCC, so that the program can name it (capture.c, RING)
        self._ring_fd, self._ring_size = -1, ringbuf_pages * mmap.PAGESIZE
        self._batch_bytes = self._ring_size // BATCH_FILL
        if not self.perf:
            self._ring_fd = make_ring(bcc, self._ring_size)
            flags += [f"-DRING_FD={self._ring_fd}", f"-DWAKE_BYTES={self._batch_bytes}"]
        self.bpf = None
        self.ring: ringbuf.RingReader | None = None
        try:
            offsets = self._load(bcc, text, flags, offsets)
            self._start(assembler, offsets, ret_offset, ringbuf_pages, batch_wait)
        except BaseException:
            # nothing made here outlives a failed start: the reader, the program, the ring
            if self.ring is not None:
                self.ring.close()
            if self.bpf is not None:
                self.bpf.cleanup()
            self._close_ring()
            raise

    def _load(self, bcc, text: str, flags: list[str], offsets: btf.KernelOffsets) -> btf.KernelOffsets:
        """Compile and load the program into self.bpf; the offsets it loaded with."""
        try:
            self.bpf = bcc.BPF(text=text, cflags=flags + offsets.cflags())
            return offsets
        except Exception as exc:            # BCC raises bare Exception for compile/attach failures
            if offsets == btf.NONE:
                raise CaptureError(f"could not load the BPF program: {exc}. Run `whodid-agent doctor`.") from None
            # the struct reads need bpf_probe_read_kernel (5.5) and bounded loops (5.3): an older
            # kernel with BTF still gets everything else
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        try:
            self.bpf = bcc.BPF(text=text, cflags=flags + btf.NONE.cflags())
        except Exception as exc2:
            raise CaptureError(f"could not load the BPF program: {exc2}. Run `whodid-agent doctor`.") from None
        self.note = (
            f"the BPF program did not load with its kernel-struct reads ({first}), so it runs without them: "
            "ses/auid and the pid namespace come only from /proc, --pid-namespace self sees only its "
            "own namespace, and unix-socket connects are not recorded, nor TCP accepts that do not ask "
            "for the peer's address")
        return btf.NONE

    def _start(self, assembler: Assembler, offsets: btf.KernelOffsets, ret_offset: int | None, ringbuf_pages: int,
               batch_wait: float) -> None:
        """The rest of the set-up, once the program is loaded."""
        if offsets.inet and offsets.tcp_state and ret_offset is not None:   # capture.c's TCP_AT_RETURN
            # capture.c's second program on connect()'s return (TCP), not auto-attached
            self.bpf.attach_tracepoint(tp=b"syscalls:sys_exit_connect", fn_name=b"tcp_connect_return")
        give_back_heap()
        self.offsets = offsets
        self.assembler = assembler
        self._records: list = []
        self._perf_lost = 0
        self._last_sweep = 0.0
        self._last_orphan_sweep = time.monotonic()
        self._orphans = 0           # connections counted under keys whose first record was lost
        self._stale_connects = 0    # connects whose outcome the kernel's probe never saw (swept)
        if self.perf:
            # per-CPU buffers: pages per CPU, so share the budget out
            # (at least 64 pages each: an argv record can take ~8 KiB)
            per_cpu = max(64, 1 << ((ringbuf_pages // max(1, os.cpu_count() or 1)).bit_length() - 1))
            self.bpf["events"].open_perf_buffer(lambda cpu, data, size: self._on_record(None, data, size),
                                                page_cnt=per_cpu, lost_cb=self._on_lost)
        else:
            self.ring = ringbuf.RingReader(self._ring_fd, self._ring_size)
        self.batch_wait = batch_wait
        self._last_read = time.monotonic()
        if self.budget.per_second > 0:
            over = self.bpf["over_budget"]
            over[over.Key(decode.OVER_BUDGET_OTHER)] = over.Leaf(0)

    def _on_lost(self, count) -> None:
        self._perf_lost += count

    def _on_record(self, _ctx, data, size) -> None:
        """A perf buffer's callback."""
        if size > ARGS_FIXED:
            size = min(size, argv_used(ctypes.string_at(data, ARGS_FIXED)))
        self._decode(ctypes.string_at(data, size))

    def _decode(self, raw: bytes) -> None:
        try:
            self._records.append(decode.decode(raw))
        except decode.DecodeError:
            self.assembler.counts["decode_errors"] += 1

    def _read_ring(self) -> None:
        for raw in self.ring.read(argv_used, ARGS_FIXED):
            self._decode(raw)

    def _assemble(self) -> list:
        records, self._records = self._records, []
        if self.perf:
            # perf buffers are per CPU: a child's exec may be read before its parent's fork
            records.sort(key=lambda r: r.hdr.ts_ns)
        return self.assembler.feed_all(records)

    def poll(self, timeout_ms: int = 200, now: bool = False) -> list:
        """Wait up to timeout_ms for records; return the events assembled from them: those of
        the batch when it is due (see BATCH_WAIT), or every record there is when `now`."""
        if self.perf:
            self.bpf.perf_buffer_poll(timeout_ms)
            return self._assemble() + self._aggregates()
        # the kernel wakes us when a batch is full or a record cannot wait (capture.c, `emit`);
        # else the batch is due when it has waited batch_wait, which may be before the timeout
        # (nothing waiting: nothing is due, and a short flush interval must not turn an idle loop)
        wait = timeout_ms / 1000
        if self.ring.pending():
            wait = min(wait, max(0.0, self._last_read + self.batch_wait - time.monotonic()))
        woken = self.ring.wait(wait)
        if woken and not now and self.ring.pending() < self._batch_bytes:
            # woken for a record that cannot wait: any user can write files by relative paths
            # by the thousand a second, and a storm of them is read every READ_GAP, not per record
            early = self._last_read + READ_GAP - time.monotonic()
            if early > 0:
                time.sleep(early)
        if now or woken or self._batch_due():
            self._last_read = time.monotonic()
            self._read_ring()
        return self._assemble() + self._aggregates()

    def _batch_due(self) -> bool:
        return self.ring.pending() >= self._batch_bytes or time.monotonic() - self._last_read >= self.batch_wait

    def drain(self) -> list:
        if self.perf:
            self.bpf.perf_buffer_poll(0)
        else:
            self._read_ring()
            self._last_read = time.monotonic()
        out = self._assemble() + self._aggregates(final=True)
        self._sweep_connects(final=True)
        return out

    def _aggregates(self, final: bool = False) -> list:
        """Events of the aggregated connections that are due (Assembler.aggregates_due), each taken
        out of the kernel's table; looked for once a second, and at stop whatever is left."""
        if time.monotonic() - self._last_orphan_sweep >= ORPHAN_SWEEP:
            self._last_orphan_sweep = time.monotonic()
            self._sweep_connects()
            if self.budget.per_second > 0:
                self._sweep_orphans()
        if not self.assembler.aggregating or (not final and time.monotonic() - self._last_sweep < AGG_SWEEP):
            return []
        self._last_sweep = time.monotonic()
        table = self.bpf["aggregated"]

        def read(key: bytes) -> tuple[int, int, int] | None:
            return take(table, table.Key.from_buffer_copy(key))

        return self.assembler.aggregates_due(read, time.clock_gettime_ns(time.CLOCK_BOOTTIME), final)

    def _sweep_connects(self, final: bool = False) -> None:
        """Connects still waiting in the kernel's `connecting` table long after their SYN - every
        moment that records one was skipped (capture.c, "The kernel does not run...") or the SYN
        is still being retried - are counted as losses, and their SYN_SENT time put in
        `connects_said`, so that neither this sweep nor the kernel counts them again. The entry
        itself is left alone: one that completes after all is still recorded. At stop, every one
        still waiting and not said is counted: its end is not known."""
        table, said = self.bpf["connecting"], self.bpf["connects_said"]
        stale = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - STALE_CONNECT_NS
        known = {bytes(k): v.value for k, v in said.items()}
        for k, v in list(table.items()):
            if known.get(bytes(k)) == v.h.ts or not (final or v.h.ts <= stale):
                continue
            self._stale_connects += 1
            if not final:
                said[k] = said.Leaf(v.h.ts)

    def stale_connects(self) -> int:
        """TCP connects, since load, whose end the agent did not see: swept (`_sweep_connects`),
        or found still waiting by a new connect on the same socket address (the kernel's count)."""
        return self._stale_connects + sum(v.value for v in self.bpf["unended_connects"].values())

    def _sweep_orphans(self) -> None:
        """A key whose first record the ring buffer had no room for is known to no one: its counts
        would stay in the kernel's table for ever, and fill it. Keys two minutes old that user
        space does not know are taken out and their connections counted as lost."""
        table = self.bpf["aggregated"]
        stale = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // decode.AGG_NS - 2
        for k, v in list(table.items()):
            key = bytes(k)
            if k.minute <= stale and key not in self.assembler.aggregating:
                try:
                    del table[k]
                except KeyError:
                    continue
                self._orphans += v.count - 1        # the first one's record is in `lost` already

    def unseen_starts(self) -> int:
        """TCP connections seen established whose start the agent had not kept, since load."""
        return sum(v.value for v in self.bpf["unseen_starts"].values())

    def lost(self) -> int:
        return sum(v.value for v in self.bpf["lost"].values()) + self._perf_lost + self._orphans

    def over_budget(self) -> dict[int, int]:
        """uid -> connection records its budget refused since load (decode.OVER_BUDGET_OTHER: uids
        the table had no room for; decode.NO_PROCESS: passive TCP opens); empty when unlimited."""
        if self.budget.per_second <= 0:
            return {}
        return {k.value: v.value for k, v in self.bpf["over_budget"].items() if v.value}

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        # Detaching a tracepoint waits in the kernel for an RCU grace period (the last perf event
        # on a tracepoint synchronizes before its buffers go), ~40-70 ms each: one after the
        # other, 55 of them held a stopping agent for 2-5 s. Waits from several threads share
        # grace periods, so detach them all at once (ctypes lets go of the GIL while each waits).
        tracepoints = list(self.bpf.tracepoint_fds)
        if tracepoints:
            with ThreadPoolExecutor(max_workers=len(tracepoints), thread_name_prefix="detach") as pool:
                list(pool.map(self.bpf.detach_tracepoint, tracepoints))
        self.bpf.cleanup()
        self._close_ring()

    def _close_ring(self) -> None:
        if self._ring_fd >= 0:
            os.close(self._ring_fd)
            self._ring_fd = -1
