"""Shipping the spool to the collector: compressed batches over HTTP(S), at least once.

The head of the spool goes out as one gzip-compressed JSON-lines POST to /v1/events with the
host's token. Only a 2xx answer deletes it from the spool; a network error, a 5xx or a 429
keeps it and retries after a backoff with full jitter (so a fleet coming back after a
collector outage does not return in lockstep), from half a second up to BACKOFF_MAX, and
never sooner than the collector's Retry-After. What the collector refuses - events one by one,
or a batch as a whole with a 4xx - would be refused again if resent: it is set aside in the
spool's `refused` table, said in the log and counted (ShipStats.set_aside), and never retried. A re-sent batch is harmless: the store keeps
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
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from whodid import logs

from .spool import Spool, SpoolError

AGENT = "whodid-agent"
GZIP_LEVEL = 1


@dataclass
class ShipStats:
    batches: int = 0
    sent: int = 0            # events acknowledged by the collector (stored, or refused and set aside)
    refused: int = 0         # events the collector refused one by one (set aside in the spool)
    set_aside: int = 0       # events moved to the spool's `refused` table: refused alone or with their batch
    failures: int = 0        # attempts that will be retried


# The first retry comes within a second, then the wait doubles up to BACKOFF_MAX: after an
# outage of any length the spool starts draining at most BACKOFF_MAX after the collector is
# back (it was 60 s, drawn at random: half a minute on average, with 60k events waiting).
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
# whole-batch refusals that no resend will change: set aside (401/403 are the token's fault,
# 408 and 429 are "later"; 413 is "smaller" until a batch is one event too large)
REFUSED_WHOLE = frozenset(range(400, 500)) - {401, 403, 408, 429}


class Shipper:
    def __init__(self, spool: Spool, url: str, token: str, *, ca_file: str | None = None,
                 batch_events: int = 5000, batch_bytes: int = 4 << 20, timeout: float = 30.0,
                 backoff_base: float = BACKOFF_BASE, backoff_max: float = BACKOFF_MAX, clock=time.time, log=None,
                 rng: random.Random | None = None):
        self.spool = spool
        self.url = url.rstrip("/") + "/v1/events"
        self.token = token
        self.batch_events, self.batch_bytes = batch_events, batch_bytes
        self.timeout = timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logs.get("agent", log)
        self.context = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file or None)
        # redirects are not followed: urllib would resend a POST's 302 as a GET, the token in
        # its Authorization header, to wherever Location points, and take its 200 for delivery
        self._opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=self.context))
        self.offset: tuple[float, float] | None = None      # (collector minus local, error bound)
        self.stats = ShipStats()
        self._attempt = 0
        self._last_complaint = ""

    # --- one request ---------------------------------------------------------------------

    def ship_once(self) -> float | None:
        """Send the head of the spool. Returns None when there was nothing to send, 0 when a batch
        went (more may follow at once), or the seconds to wait before trying again."""
        try:
            return self._ship_once()
        except SpoolError as exc:
            # the spool cannot be read or written (its disk is full): what was sent stays in it
            # and goes again later - the collector stores nothing twice - and shipping lives on
            return self._retry("spool", str(exc))

    def _ship_once(self) -> float | None:
        head = self.spool.peek(self.batch_events, self.batch_bytes)
        if not head:
            return None
        upto, lines = head[-1][0], [line for _, line in head]
        # level 1: a storm's JSON lines still shrink ~16x (6 made them ~21x) for less than half
        # the CPU, which the host pays for every event (bench/agent_profile.py, docs/agent.md)
        body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=GZIP_LEVEL)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/x-ndjson",
                   "Content-Encoding": "gzip", "User-Agent": AGENT}
        if self.offset:
            headers["X-Whodid-Clock"] = f"offset={self.offset[0]:.6f} error={self.offset[1]:.6f}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        t0 = self.clock()
        retry_after = None
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, answer, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, answer, headers = exc.code, exc.read(), exc.headers
            retry_after = exc.headers.get("Retry-After")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return self._retry("unreachable", f"cannot reach the collector at {self.url} ({reason})")
        t1 = self.clock()
        self._measure(t0, t1, headers.get("X-Whodid-Received"), headers.get("X-Whodid-Time"))
        info = _json(answer)
        message = info.get("error") or answer[:200].decode("utf-8", "replace")
        if 200 <= status < 300 or (status == 400 and "refused_count" in info):
            # stored, but for the events refused one by one (400: all of them): those are set
            # aside - resending them would be refused again, for ever - and the rest acknowledged
            refusals = _refusals(info, len(head))
            set_aside = self.spool.set_aside_some(upto, {head[n - 1][0]: why for n, why in refusals.items()})
            self.stats.batches += 1
            self.stats.sent += len(lines)
            if refusals:
                self.stats.refused += len(refusals)
                self.stats.set_aside += set_aside
                first = min(refusals)
                self.log.error(f"the collector refused {len(refusals)} of {len(lines)} events; they are set aside "
                               f"in the spool's `refused` table of {self.spool.path} ({self.stats.set_aside} so far), "
                               f"the rest is delivered. First: line {first}: {refusals[first]}")
            self._recovered()
            return 0
        if status == 413 and self.batch_events > 1:
            self.batch_events = max(1, self.batch_events // 2)
            self.batch_bytes = max(1 << 16, self.batch_bytes // 2)
            self.log.warning(f"the collector said the batch was too large ({message}); trying batches of "
                             f"{self.batch_events} events")
            return 0
        if status in REFUSED_WHOLE:
            n = self.spool.set_aside(upto, f"{status}: {message}")
            self.stats.set_aside += n
            self.log.error(f"the collector refused a batch of {n} events as a whole ({status}: {message}); they "
                           f"are set aside in the spool's `refused` table of {self.spool.path} ({self.stats.set_aside} "
                           "so far), and shipping goes on")
            self._recovered()
            return 0
        if status in (401, 403):
            return self._retry(f"token {status}", f"the collector refused this agent's token ({status}: {message}); "
                               "check agent.token (or $WHODID_AGENT_TOKEN) against `whodid token add HOST` on the "
                               "collector. Events are kept in the spool meanwhile", floor=30.0, level="error")
        if 300 <= status < 400:
            return self._retry(f"status {status}", f"the collector answered {status}, a redirect to "
                               f"{headers.get('Location')!r}, which an agent does not follow with its token; "
                               "give the collector's final address (agent.collector or --collector)")
        return self._retry(f"status {status}", f"the collector answered {status} ({message})",
                           floor=_seconds(retry_after))

    def _retry(self, what: str, complaint: str, floor: float | None = None, level: str = "warning") -> float:
        """The wait before the next attempt: exponential backoff with full jitter (a fleet coming
        back after an outage does not return in lockstep), never less than the collector's
        Retry-After. The complaint is said once per kind of trouble, with what waits: a warning
        (nothing is lost, all waits in the spool), an error when only a person can fix it."""
        self.stats.failures += 1
        self._attempt += 1
        if what != self._last_complaint:
            try:
                waiting = self.spool.pending()
            except SpoolError:
                waiting = "an unknown number of"
            getattr(self.log, level)(f"{complaint}; {waiting} events wait in the spool; retrying with backoff "
                                     f"(at most {self.backoff_max:g} s between attempts)")
            self._last_complaint = what
        return max(self.rng.uniform(0, self.backoff_delay(self._attempt)), floor or 0.0)

    def backoff_delay(self, attempt: int) -> float:
        """The longest wait before attempt number `attempt` (1 = the first retry)."""
        return min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 32))

    def _recovered(self) -> None:
        if self._attempt:
            self.log.info(f"the collector answers again after {self._attempt} failed attempts; "
                          f"{self.spool.pending()} events wait in the spool")
        self._attempt = 0
        self._last_complaint = ""

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
        """Ship until stop is set. The spool keeps whatever is not acknowledged by then. Every
        wait ends at once when stop is set through wake(): SIGTERM with nothing to send stops
        the agent without waiting out a poll."""
        while not stop.is_set():
            self.spool.report_drops()
            wait = self.ship_once()
            if wait == 0:
                continue
            if wait is None:
                self.spool.arrived.wait(1.0)        # new events come with a wake-up; 1 s for the drop report
                self.spool.arrived.clear()
            else:
                stop.wait(wait)

    def wake(self, stop: threading.Event) -> None:
        """Set stop, and wake run() from an idle wait."""
        stop.set()
        self.spool.arrived.set()

    def drain(self, deadline: float) -> None:
        """On shutdown: ship what is in the spool while the collector answers, until deadline.
        No request outlives the deadline by its timeout: a collector that does not answer
        must not hold a stopping agent for the full request timeout."""
        timeout = self.timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.timeout = min(timeout, max(left, 0.1))
                if self.ship_once() != 0:
                    return
        finally:
            self.timeout = timeout


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None                     # urllib then raises HTTPError with the 3xx


def _json(body: bytes) -> dict:
    try:
        obj = json.loads(body)
        return obj if isinstance(obj, dict) else {}
    except ValueError:
        return {}


def _refusals(info: dict, size: int) -> dict[int, str]:
    """line number (1-based, in the batch as sent) -> why, for every event the collector refused.
    `refused_lines` names them all; a collector that predates it lists the first 100 in
    `refused`, and only those can be set aside."""
    why = {r.get("line"): f"{r.get('field')}: {r.get('error')}" for r in info.get("refused") or []
           if isinstance(r, dict)}
    numbers = info.get("refused_lines")
    if not isinstance(numbers, list):
        numbers = list(why)
    return {n: why.get(n, "refused by the collector (see its rejects)") for n in numbers
            if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= size}


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 300.0) if value else None
    except ValueError:
        return None
