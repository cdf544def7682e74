"""Shipping the spool to the collector: compressed batches over HTTP(S), at least once.

The head of the spool goes out as one gzip-compressed JSON-lines POST to /v1/events with the
host's token. Only a 2xx answer deletes it from the spool; a network error, a 5xx or a 429
keeps it and retries after a backoff with full jitter (so a fleet coming back after a
collector outage does not return in lockstep). A re-sent batch is harmless: the store keeps
one copy of each event by its natural key (host, boot, pid, start time, event time...).

Each answer carries the collector's clock (X-Whodid-Time); the agent measures its own offset
from it, NTP-style, and sends the last measurement with the next batch (X-Whodid-Clock), so
traces can put every host's events on one clock.
"""

from __future__ import annotations

import gzip
import json
import random
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .spool import Spool

AGENT = "whodid-agent"


@dataclass
class ShipStats:
    batches: int = 0
    sent: int = 0            # events acknowledged by the collector
    refused: int = 0         # events the collector refused (kept in its store's rejects)
    set_aside: int = 0       # events of whole batches the collector refused (kept in the spool)
    failures: int = 0        # attempts that will be retried


class Shipper:
    def __init__(self, spool: Spool, url: str, token: str, *, ca_file: str | None = None,
                 batch_events: int = 5000, batch_bytes: int = 4 << 20, timeout: float = 30.0,
                 backoff_base: float = 0.5, backoff_max: float = 60.0, clock=time.time, log=None):
        self.spool = spool
        self.url = url.rstrip("/") + "/v1/events"
        self.token = token
        self.batch_events, self.batch_bytes = batch_events, batch_bytes
        self.timeout = timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.clock = clock
        self.log = log or (lambda msg: print(f"whodid-agent: {msg}", file=sys.stderr, flush=True))
        self.context = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file or None)
        self.offset: tuple[float, float] | None = None      # (collector minus local, error bound)
        self.stats = ShipStats()
        self._attempt = 0
        self._last_complaint = ""

    # --- one request ---------------------------------------------------------------------

    def ship_once(self) -> float | None:
        """Send the head of the spool. Returns None when there was nothing to send, 0 when a batch
        went (more may follow at once), or the seconds to wait before trying again."""
        upto, lines = self.spool.head(self.batch_events, self.batch_bytes)
        if not lines:
            return None
        body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/x-ndjson",
                   "Content-Encoding": "gzip", "User-Agent": AGENT}
        if self.offset:
            headers["X-Whodid-Clock"] = f"offset={self.offset[0]:.6f} error={self.offset[1]:.6f}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        t0 = self.clock()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                status, answer, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, answer, headers = exc.code, exc.read(), exc.headers
            retry_after = exc.headers.get("Retry-After")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return self._retry(f"cannot reach the collector at {self.url} ({reason}); {len(lines)} events wait "
                               "in the spool")
        else:
            retry_after = None
        t1 = self.clock()
        self._measure(t0, t1, headers.get("X-Whodid-Received"), headers.get("X-Whodid-Time"))
        info = _json(answer)
        if 200 <= status < 300:
            self.spool.ack(upto)
            self.stats.batches += 1
            self.stats.sent += len(lines)
            refused = info.get("refused_count", 0)
            if refused:
                self.stats.refused += refused
                first = (info.get("refused") or [{}])[0]
                self.log(f"the collector refused {refused} of {len(lines)} events (kept in its store); first: "
                         f"line {first.get('line')}: {first.get('field')}: {first.get('error')}")
            self._attempt = 0
            self._last_complaint = ""
            return 0
        message = info.get("error") or answer[:200].decode("utf-8", "replace")
        if status == 400 and "refused_count" in info:
            # every event was invalid; the collector kept them in its rejects: nothing to resend
            self.spool.ack(upto)
            self.stats.refused += info["refused_count"]
            self.log(f"the collector refused a whole batch of {len(lines)} events: {message}")
            return 0
        if status == 413 and self.batch_events > 1:
            self.batch_events = max(1, self.batch_events // 2)
            self.batch_bytes = max(1 << 16, self.batch_bytes // 2)
            self.log(f"the collector said the batch was too large ({message}); trying batches of "
                     f"{self.batch_events} events")
            return 0
        if status in (400, 411, 413, 415):
            n = self.spool.set_aside(upto, f"{status}: {message}")
            self.stats.set_aside += n
            self.log(f"the collector refused a batch of {n} events as a whole ({status}: {message}); they are "
                     f"kept in the spool's `refused` table of {self.spool.path}, and shipping goes on")
            return 0
        if status in (401, 403):
            return self._retry(f"the collector refused this agent's token ({status}: {message}); check "
                               "agent.token (or $WHODID_AGENT_TOKEN) against `whodid token add HOST` on the "
                               "collector. Events are kept in the spool meanwhile", floor=30.0)
        return self._retry(f"the collector answered {status} ({message}); {len(lines)} events wait in the spool",
                           floor=_seconds(retry_after))

    def _retry(self, complaint: str, floor: float | None = None) -> float:
        self.stats.failures += 1
        self._attempt += 1
        if complaint != self._last_complaint:          # say it once, not on every retry
            self.log(complaint)
            self._last_complaint = complaint
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(self._attempt, 16))
        wait = random.uniform(0, cap)                    # full jitter
        return max(wait, floor or 0.0)

    def _measure(self, t0: float, t1: float, received: str | None, sent: str | None) -> None:
        """NTP's arithmetic: t0/t1 local send/receive, r/s the collector's receive/send. The
        collector's time spent writing the batch is not counted as network delay."""
        try:
            r, s = float(received), float(sent)
        except (TypeError, ValueError):
            return
        if t1 < t0 or s < r:
            return
        offset = ((r - t0) + (s - t1)) / 2
        error = max(((t1 - t0) - (s - r)) / 2, 0.0)
        # a sample with a much worse error bound (a congested moment) does not replace a good one
        if self.offset is None or error <= self.offset[1] * 2 or error < 0.05:
            self.offset = (offset, error)

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Ship until stop is set. The spool keeps whatever is not acknowledged by then."""
        while not stop.is_set():
            self.spool.report_drops()
            wait = self.ship_once()
            if wait == 0:
                continue
            if wait is None:
                self.spool.arrived.wait(1.0)
                self.spool.arrived.clear()
            else:
                stop.wait(wait)

    def drain(self, deadline: float) -> None:
        """On shutdown: ship what is in the spool while the collector answers, until deadline."""
        while time.monotonic() < deadline:
            if self.ship_once() != 0:
                return


def _json(body: bytes) -> dict:
    try:
        obj = json.loads(body)
        return obj if isinstance(obj, dict) else {}
    except ValueError:
        return {}


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 300.0) if value else None
    except ValueError:
        return None
