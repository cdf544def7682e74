"""Decoding one shipped batch: pure functions, no I/O.

A batch is schema-v1 JSON lines, gzip-compressed or not. Every event must name the host its
token belongs to - an agent speaks only for itself. Bad lines are refused one by one with the
reason; the rest of the batch is kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from whodid.tracer.events import EventError, decode_line

RAW_KEPT = 2000          # characters of a refused line kept for people to look at


class BatchError(Exception):
    """The whole request is unusable: HTTP status and a message for the agent's log."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Batch:
    host: str
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[int, str, str, str]] = field(default_factory=list)   # (line, field, error, raw)
    received: int = 0
    lines: list[int] = field(default_factory=list)        # each event's line in the request


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent, inflated if gzip; never more than `limit` bytes of output, so a
    small compressed bomb cannot take the collector's memory. Exactly one gzip member and
    nothing after it: a second member or trailing bytes were ignored once, losing events
    without a word, so now they refuse the batch (agents send one member)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise BatchError(415, f"Content-Encoding {encoding!r} is not supported; send gzip or identity")
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BatchError(400, f"the body is not valid gzip ({exc})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise BatchError(413, f"the batch inflates to more than {limit} bytes; send smaller batches")
    if not d.eof:
        raise BatchError(400, "the gzip stream is truncated")
    if d.unused_data:
        what = "a second gzip member" if d.unused_data[:2] == b"\x1f\x8b" else "trailing bytes"
        raise BatchError(400, f"{len(d.unused_data)} bytes follow the end of the gzip stream ({what}); "
                              "send the batch as one gzip stream and nothing after it")
    return out


def parse_batch(data: bytes, host: str) -> Batch:
    batch = Batch(host=host)
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        batch.received += 1
        try:
            ev = decode_line(line)
        except EventError as err:
            batch.refused.append((number, err.field, err.message, _raw(line)))
            continue
        if ev["host"] != host:
            batch.refused.append((number, "host", f"this agent's token is for host {host!r}, not {ev['host']!r}",
                                  _raw(line)))
            continue
        batch.events.append(ev)
        batch.lines.append(number)
    return batch


def parse_clock(header: str | None) -> tuple[float, float] | None:
    """`offset=0.0123 error=0.0004` (seconds) -> (offset, error); anything else -> None."""
    if not header:
        return None
    try:
        parts = dict(p.split("=", 1) for p in header.replace(",", " ").split())
        offset, error = float(parts["offset"]), float(parts["error"])
    except (KeyError, ValueError):
        return None
    if not (abs(offset) < 10 * 365 * 86400 and 0 <= error < 3600):
        return None
    return offset, error


def _raw(line: bytes) -> str:
    return line[:RAW_KEPT].decode("utf-8", "replace")
