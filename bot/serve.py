"""`whodid serve`: the collector, the Slack bot and the scheduled jobs, in one process.

Runs until SIGTERM or SIGINT, then stops taking questions and batches, finishes the answers
and writes the batches already received, and exits 0 - as systemd expects. Stopping takes
seconds whatever clients do: every server stops accepting and drops idle connections at once,
gives requests in flight a few seconds' grace (all servers' graces run together), then cuts
them (whodid.guarded_http).
"""

from __future__ import annotations

import faulthandler
import os
import time

from apscheduler.schedulers.background import BackgroundScheduler

from whodid import config as config_mod
from whodid import logs, sdnotify
from whodid.guarded_http import Deadlines
from whodid.stopping import Stop
from whodid.collector.server import Collector, Limits


log = logs.get("serve")


def serve(cfg: config_mod.Config, db: str | None = None, listen: str | None = None,
          ready_file: str | None = None) -> int:
    c = cfg.collector
    if listen:
        c = config_mod.CollectorConfig(**{**c.__dict__, "listen": listen})
    host, port = c.address()
    path = cfg.store_path(db)
    d = config_mod.parse_duration
    limits = Limits(max_body=config_mod.parse_size(c.max_body), max_batch=config_mod.parse_size(c.max_batch),
                    max_connections=c.max_connections,
                    deadlines=Deadlines(header=d(c.header_timeout), body=d(c.body_timeout), idle=d(c.idle_timeout),
                                        write=30, grace=5))
    try:
        collector = Collector(path, host, port, limits=limits, tls_cert=c.tls_cert or None,
                              tls_key=c.tls_key or None)
    except OSError as exc:
        log.error(f"cannot listen on {host}:{port}: {exc.strerror}; choose another with --listen or "
                  "collector.listen")
        return 2
    except ValueError as exc:
        log.error(str(exc))
        return 2
    bot = None
    if cfg.slack.mode != "off":
        from .slack.app import Bot, SlackSetupError
        if not cfg.slack.secret("bot_token"):
            log.warning("Slack bot off: no bot token ($SLACK_BOT_TOKEN or slack.bot_token; see README, \"Install in "
                        "your workspace\"); set slack.mode: off to silence this")
        else:
            try:
                bot = Bot(cfg, path)
            except SlackSetupError as exc:
                log.error(str(exc))
                collector.stop()
                return 2
    pages = None
    if cfg.web.enabled:
        from .web.pages import TracePages
        pages = TracePages(cfg, path)
        try:
            where = pages.start()
        except OSError as exc:
            log.error(f"cannot serve trace pages on {cfg.web.listen}: {exc.strerror}; choose another with web.listen "
                      "(or web.listen: off)")
            collector.stop()
            return 2
        log(f"trace pages on {where}; links point at {cfg.web.url()}")
        if bot is not None:
            bot.pages = pages
    collector.start()
    if not collector.tls and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(f"warning: serving plain HTTP on {host}: agent tokens and command lines cross the network "
                    "unencrypted; set collector.tls_cert and collector.tls_key")

    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300})
    retention = cfg.store.retention_seconds
    if retention:
        def prune() -> None:
            started = time.monotonic()
            report = collector.writer.call(lambda store: store.prune(time.time() - retention)).result()
            if report.procs_removed or report.rows_removed:
                log(f"retention ({cfg.store.retention}): {report.summary()} in {time.monotonic() - started:.1f}s")
        scheduler.add_job(prune, "interval", seconds=config_mod.parse_duration(cfg.store.prune_every),
                          id="retention", name="retention")
        scheduler.add_job(prune, "date", id="retention-now", name="retention at start")
    outbox = None
    if cfg.outputs:                   # webhooks, syslog: spooled, each delivered by its own thread
        from .outputs import Outbox
        spool = config_mod.data_dir() / "outbox"
        outbox = Outbox(cfg.outputs, spool, log=logs.get("outputs")).start()
        log(f"outputs: {', '.join(f'{o.name} ({o.type})' for o in cfg.outputs.values())}, spooled in {spool}")
    if cfg.canaries:
        from .canary.alerts import FilePoster, SlackPoster, WithOutputs
        from .canary.runner import CanaryRunner
        if bot is not None:
            unrouted = [c.name for c in cfg.canaries if not c.channel and not c.outputs]
            if unrouted:
                log.error(f"canaries without a channel to alert: {', '.join(unrouted)}; set `channel` (or `outputs`) on each")
                scheduler.shutdown(wait=False)
                collector.stop()
                return 2
            poster = SlackPoster(bot)
        else:
            alerts_dir = config_mod.data_dir() / "alerts"
            log(f"no Slack: canary alerts go to this log and to files in {alerts_dir}")
            poster = FilePoster(alerts_dir)
        if outbox is not None:
            poster = WithOutputs(poster, outbox, needs_channel=bot is not None)
        CanaryRunner(cfg, path, poster).schedule(scheduler)
        log(f"{len(cfg.canaries)} canaries scheduled: "
            + ", ".join(f"{c.name} ({c.schedule()})" for c in cfg.canaries))
    if cfg.changes.digest:
        from .changes import DigestJob
        out = None if bot is not None else str(config_mod.data_dir() / "digests")
        if bot is None:
            log(f"no Slack: the change digest goes to this log and to files in {out}")
        where = DigestJob(cfg, path, bot, out_dir=out, outbox=outbox).schedule(scheduler)
        log(f"change digest scheduled: {where}")
    scheduler.start()
    if bot is not None:
        try:
            log(bot.start())
        except Exception as exc:        # a port in use, Slack unreachable for Socket Mode
            log.error(f"the Slack bot could not start: {exc}")
            scheduler.shutdown(wait=False)
            collector.stop()
            return 2

    from .health import checks
    collector.checks.update(checks(bot, scheduler, pages))
    stop = Stop().install()
    log(f"collector listening on {collector.url} (POST /v1/events, GET /healthz, GET /metrics), store {path}"
        + (f", retention {cfg.store.retention}" if retention else ", retention off"))
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write(f"{os.getpid()} {collector.url}\n")
    sdnotify.ready(f"collector on {collector.url}")       # Type=notify: listening, jobs scheduled
    stop.wait()
    sdnotify.stopping("stopping: finishing requests in flight")
    log("stopping: finishing requests in flight and writing what was received")
    # should stopping ever hang, say where: every thread's stack goes to the log after 30 s
    faulthandler.dump_traceback_later(30, exit=False)
    # the servers' graces start together: stopping takes the longest grace, not their sum
    collector.httpd.begin_stop()
    if pages is not None:
        pages.begin_stop()
    if bot is not None:
        bot.stop()
    scheduler.shutdown(wait=False)
    if outbox is not None:
        outbox.stop()                 # what is still spooled is delivered at the next start
    if pages is not None:
        pages.stop()
    collector.stop()
    faulthandler.cancel_dump_traceback_later()
    log(f"stopped; {collector.writer.written} events written since start")
    return 0
