"""Running canaries: on APScheduler inside `whodid serve`, or by hand (`whodid canary run`).

One run: the check (bounded by its timeout), the state machine, and - when it says so - the
alert with its suspects, their traces pinned past retention, delivered by a Poster. A message
that could not be delivered is kept in the canary's state and tried again - on the canary's
next run and every RETRY_EVERY seconds - until it is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace

from whodid import config as config_mod
from whodid import logs
from whodid.tracer import Store
from whodid.tracer.render.text import printable

from . import alerts
from .alerts import State
from .checks import Canary, Result, run
from ..tracing import tracer_for

RETRY_EVERY = 30.0           # seconds between attempts to post what could not be posted


class CanaryRunner:
    def __init__(self, cfg: config_mod.Config, store_path: str, poster: alerts.Poster, log=None):
        self.cfg = cfg
        self.canaries = {c.name: c for c in cfg.canaries}
        self.store_path = store_path
        self.poster = poster
        self.log = logs.get("canary", log)
        # one state change at a time per canary (a run, a redelivery); one lock each, so a
        # delivery that takes long (Slack slow, a 429's Retry-After slept) holds up no other canary
        self.locks = {name: threading.Lock() for name in self.canaries}

    def schedule(self, scheduler) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger
        for c in self.canaries.values():
            trigger = IntervalTrigger(seconds=c.every) if c.every else CronTrigger.from_crontab(c.cron, timezone="UTC")
            # one run of a canary at a time; runs missed while one hung are folded into one
            scheduler.add_job(self.run_one, trigger, args=[c.name], id=f"canary:{c.name}", name=f"canary {c.name}",
                              max_instances=1, coalesce=True, misfire_grace_time=max(int(c.every or 60), 1))
        scheduler.add_job(self.redeliver, IntervalTrigger(seconds=RETRY_EVERY), id="canary-deliveries",
                          name="canary alerts not delivered yet", max_instances=1, coalesce=True)

    def run_one(self, name: str) -> tuple[Result, str | None]:
        c = self.canaries[name]
        result = run(c)
        now = time.time()
        with self.locks[name]:
            store = Store.open(self.store_path, create=True)
            try:
                saved = store.canary_state(name)
                state = State(**saved) if saved else State(name=name)
                new, action = alerts.step(state, result, now, c)
                new = self._deliver_all(store, c, new, result, alerts.pending(new, action))
                store.save_canary_state(asdict(new))
            finally:
                store.close()
        if action or (not result.ok and new.failures == 1):      # changes, not every failing minute
            say = self.log.info if result.ok else self.log.warning
            say(printable(f"{name}: {'ok' if result.ok else 'FAILED'} ({result.summary}, "   # a remote's words
                          f"{result.seconds:.1f}s)" + (f" -> {action}" if action else "")), canary=name)
        return result, action

    def redeliver(self) -> None:
        """Try again to post what each canary could not post yet."""
        for name, c in self.canaries.items():
            with self.locks[name]:
                store = Store.open(self.store_path, create=True)
                try:
                    saved = store.canary_state(name)
                    if not saved or not saved.get("undelivered"):
                        continue
                    state = State(**saved)
                    result = Result(ok=state.status == "ok", summary=state.last_summary or "")
                    store.save_canary_state(asdict(self._deliver_all(store, c, state, result,
                                                                     alerts.pending(state, None))))
                finally:
                    store.close()

    def _deliver_all(self, store: Store, c: Canary, state: State, result: Result, queue: list[str]) -> State:
        """Deliver the queue in order; stop at the first that fails (a recovery waits for its alert)."""
        for done, kind in enumerate(queue):
            if kind == "alert":
                delivered, state = self._alert(store, c, state, result)
            else:
                fn = self.poster.again if kind == "again" else self.poster.recovered
                delivered = self._deliver(fn, c, state, result) is not _FAILED
            if not delivered:
                self.log.warning(f"{c.name}: {', '.join(queue[done:])} not delivered yet; trying again in "
                                 f"{RETRY_EVERY:g}s and at the next run", canary=c.name)
                return alerts.after_delivery(state, queue, done)
        return alerts.after_delivery(state, queue, len(queue))

    def suspects(self, store: Store, c: Canary, first_failure: float):
        tracer = tracer_for(self.cfg, store)
        suspects = alerts.find_suspects(tracer, c, first_failure, rules=self.cfg.changes)
        changes = [] if suspects else alerts.recent_changes(store, c, first_failure)
        return suspects, changes

    def _alert(self, store: Store, c: Canary, state: State, result: Result) -> tuple[bool, State]:
        said, result = (state, result) if state.since is not None else alerts.late(state, c)
        suspects, changes = self.suspects(store, c, said.since)
        for s in suspects:           # the evidence of an open incident outlives retention
            store.pin({d["step"].proc for _, d in s.trace.graph.nodes(data=True)}, time.time() + alerts.PIN_FOR,
                      f"canary {c.name} alert")
        where = self._deliver(self.poster.alert, c, said, result, suspects, changes)
        if where is _FAILED:
            return False, state
        if where:
            state = replace(state, alert_channel=where[0], alert_ts=where[1])
        return True, state

    def _deliver(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:              # Slack down: the state still moves; say so
            self.log.error(f"could not deliver {fn.__name__} for canary {args[0].name}: {exc}", canary=args[0].name)
            return _FAILED


_FAILED = object()
