"""Load capture.c into the kernel with BCC and turn its ring buffer into schema events.

The Capture object is the edge between the kernel and the rest of the agent: `poll()`
hands decoded, assembled events to a callback in batches, and `lost()` says how many
records the ring buffer had to drop.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Callable

from . import decode
from .assemble import Assembler, kernel_prefixes
from .bccload import load_bcc

SOURCE = Path(__file__).with_name("capture.c")

ARGS_FIXED = decode.HDR.size + decode.ARGS_HEAD.size


class CaptureError(RuntimeError):
    pass


def program_text(watch: tuple[str, ...], ringbuf_pages: int = 1024) -> str:
    """capture.c with the loader's substitutions (see its header)."""
    checks = "".join(f' || has_prefix(p, "{_c(p)}", {len(p.encode())})' for p in kernel_prefixes(watch)
                     if len(p.encode()) <= 64)
    return (SOURCE.read_text().replace("RINGBUF_PAGES", str(ringbuf_pages))
            .replace("WATCH_PREFIXES", checks))


def _c(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def own_pid_namespace() -> tuple[int, int]:
    """(device, inode) of this process's pid namespace, as bpf_get_ns_current_pid_tgid wants."""
    st = os.stat("/proc/self/ns/pid")
    return st.st_dev, st.st_ino


def boot_epoch() -> float:
    """Epoch seconds at boot, to turn CLOCK_BOOTTIME stamps into wall-clock times."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Capture:
    def __init__(self, assembler: Assembler, watch: tuple[str, ...], ringbuf_pages: int = 1024,
                 pidns: tuple[int, int] | None = None):
        if os.geteuid() != 0:
            raise CaptureError("the agent needs root (or CAP_BPF and CAP_PERFMON) to load its BPF program")
        bcc = load_bcc()
        flags = ["-Wno-macro-redefined", "-Wno-unused-value", "-Wno-visibility",
                 f"-DPIDNS_FILTER={1 if pidns else 0}"]
        if pidns:
            flags += [f"-DPIDNS_DEV={pidns[0]}ULL", f"-DPIDNS_INO={pidns[1]}ULL"]
        try:
            self.bpf = bcc.BPF(text=program_text(watch, ringbuf_pages), cflags=flags)
        except Exception as exc:            # BCC raises bare Exception for compile/attach failures
            raise CaptureError(f"could not load the BPF program: {exc}. Run `whodid-agent doctor`.") from None
        self.assembler = assembler
        self.sink: Callable[[list], None] | None = None
        self._batch: list = []
        self.bpf["events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size) -> None:
        if size > ARGS_FIXED:
            # argv records are reserved at their largest; copy only the part in use
            head = ctypes.string_at(data, ARGS_FIXED)
            if decode.HDR.unpack_from(head)[5] == decode.EV_EXEC_ARGS:
                used = decode.ARGS_HEAD.unpack_from(head, decode.HDR.size)[3]
                size = min(size, ARGS_FIXED + used)
        raw = ctypes.string_at(data, size)
        try:
            rec = decode.decode(raw)
        except decode.DecodeError:
            self.assembler.counts["decode_errors"] += 1
            return
        self._batch.extend(self.assembler.feed(rec))

    def poll(self, timeout_ms: int = 200) -> list:
        """Wait up to timeout_ms for records; return the events assembled from them."""
        self.bpf.ring_buffer_poll(timeout_ms)
        out, self._batch = self._batch, []
        return out

    def drain(self) -> list:
        self.bpf.ring_buffer_consume()
        out, self._batch = self._batch, []
        return out

    def lost(self) -> int:
        return sum(v.value for v in self.bpf["lost"].values())

    def close(self) -> None:
        self.bpf.cleanup()
