"""What /healthz says about the bot's side of `whodid serve`: the Slack connection, the
scheduler and the trace pages.

Each check is a function returning None when healthy, else one line saying what is wrong; the
collector's /healthz runs them by name (Collector.checks) beside its own store checks. Checks
look from outside where they can - a request to the page server, the Socket Mode client's own
idea of its connection - because a thread that is alive can still be stuck.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

Check = Callable[[], "str | None"]
PROBE_TIMEOUT = 2.0          # a server that cannot answer a GET in this long is not serving


def checks(bot=None, scheduler=None, pages=None) -> dict[str, Check]:
    """The named checks for what `whodid serve` runs."""
    out: dict[str, Check] = {}
    if bot is not None:
        out["slack"] = bot.health
    if scheduler is not None:
        out["scheduler"] = SchedulerWatch(scheduler)
    if pages is not None:
        out["pages"] = lambda: probe(pages.url)
    return out


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Whether an HTTP server answers at url (any status will do: it is serving). HEAD, which
    our servers answer without logging, so a monitor polling /healthz adds no noise."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("HEAD", "/")
        conn.getresponse().read()
        return None
    except OSError as exc:
        return f"not answering at {u.scheme}://{u.netloc} ({exc})"
    finally:
        conn.close()


class SchedulerWatch:
    """The scheduler is running, and no job has overrun: a job still running when its next run
    came (APScheduler skips that run: max_instances=1) is stalled until it finishes."""

    def __init__(self, scheduler):
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES
        self.scheduler = scheduler
        self.lock = threading.Lock()
        self.overrun: dict[str, float] = {}        # job id -> when its first run was skipped
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def _skipped(self, event) -> None:
        with self.lock:
            self.overrun.setdefault(event.job_id, time.time())

    def _done(self, event) -> None:
        with self.lock:
            self.overrun.pop(event.job_id, None)

    def __call__(self) -> str | None:
        from apscheduler.schedulers.base import STATE_RUNNING
        if self.scheduler.state != STATE_RUNNING:
            return "the scheduler is not running: canaries, digests and retention are not run"
        with self.lock:
            stalled = sorted(self.overrun.items(), key=lambda kv: kv[1])
        if not stalled:
            return None
        names = []
        for job_id, since in stalled:
            job = self.scheduler.get_job(job_id)
            names.append(f"{job.name if job else job_id} (a run skipped at {time.strftime('%H:%M:%S', time.gmtime(since))} UTC)")
        return "still running when due again: " + ", ".join(names)
