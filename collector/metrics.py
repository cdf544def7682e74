"""What /metrics reports, in Prometheus text format (through prometheus_client).

Counters live in memory (they restart at zero with the process, as Prometheus expects);
lost events, last-seen times and the store's size are read from the store at scrape time,
so they survive restarts and count what agents reported before this process started.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from whodid import __version__


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.received: dict[str, int] = defaultdict(int)    # events in batches, per host
        self.accepted: dict[str, int] = defaultdict(int)
        self.new: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        self.batches: dict[str, int] = defaultdict(int)
        self.lag: dict[str, float] = {}                      # arrival minus newest event time, seconds
        self.refused_requests: dict[str, int] = defaultdict(int)   # by reason: unauthorized, too_large...

    def batch(self, host: str, received: int, accepted: int, new: int, rejected: int, lag: float | None) -> None:
        with self.lock:
            self.batches[host] += 1
            self.received[host] += received
            self.accepted[host] += accepted
            self.new[host] += new
            self.rejected[host] += rejected
            if lag is not None:
                self.lag[host] = lag

    def refused(self, reason: str) -> None:
        with self.lock:
            self.refused_requests[reason] += 1

    def render(self, read_store) -> bytes:
        """read_store(fn) runs fn(store) on a reading connection and returns its result."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self, read_store))
        return generate_latest(registry)


class _Snapshot:
    def __init__(self, metrics: Metrics, read_store):
        self.m, self.read_store = metrics, read_store

    def collect(self):
        m = self.m
        with m.lock:
            per_host = [("whodid_events_received", "Events received in batches", m.received),
                        ("whodid_events_accepted", "Events that passed validation", m.accepted),
                        ("whodid_events_new", "Accepted events the store had not seen (re-sends are not new)", m.new),
                        ("whodid_events_rejected", "Events refused (malformed, or for another host)", m.rejected),
                        ("whodid_batches", "Batches written", m.batches)]
            for name, help_, values in per_host:
                fam = CounterMetricFamily(name, help_, labels=["host"])
                for host, n in sorted(values.items()):
                    fam.add_metric([host], n)
                yield fam
            fam = CounterMetricFamily("whodid_requests_refused", "Requests refused whole", labels=["reason"])
            for reason, n in sorted(m.refused_requests.items()):
                fam.add_metric([reason], n)
            yield fam
            fam = GaugeMetricFamily("whodid_host_lag_seconds",
                                    "Arrival time minus the newest event's time, in the last batch", labels=["host"])
            for host, lag in sorted(m.lag.items()):
                fam.add_metric([host], lag)
            yield fam
        inventory, lost, size = self.read_store(lambda s: (s.inventory(), s.lost_by_host(), s.size()))
        now = time.time()
        fam = CounterMetricFamily("whodid_agent_lost_events", "Records agents reported lost (kernel buffer "
                                  "overruns, full spool)", labels=["host"])
        for host, n in sorted(lost.items()):
            fam.add_metric([host], n)
        yield fam
        fam = GaugeMetricFamily("whodid_host_last_seen_seconds", "Seconds since the host's last batch arrived",
                                labels=["host"])
        off = GaugeMetricFamily("whodid_host_clock_offset_seconds",
                                "Collector clock minus the host's clock, as the agent last measured", labels=["host"])
        for h in inventory:
            if h["seen_at"] is not None:
                fam.add_metric([h["host"]], max(0.0, now - h["seen_at"]))
            if h["clock_offset"] is not None:
                off.add_metric([h["host"]], h["clock_offset"])
        yield fam
        yield off
        yield GaugeMetricFamily("whodid_store_bytes", "Size of the store on disk, write-ahead log included",
                                value=size)
        info = GaugeMetricFamily("whodid_build_info", "whodid version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
