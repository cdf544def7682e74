"""/healthz covers what runs beside the collector (issue 16 item 10): the Slack connection, the
scheduler and the trace pages - real ones, over HTTP, made to fail."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from apscheduler.schedulers.background import BackgroundScheduler

from slackemu import SlackEmulator, http_slack, no_slack_env

from whodid import config as config_mod
from whodid.bot.health import checks
from whodid.bot.slack.app import Bot
from whodid.bot.web.pages import TracePages
from whodid.collector.server import Collector
from whodid.tracer import Store


def healthz(c):
    try:
        with urllib.request.urlopen(c.url + "/healthz", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_fails_when_slack_the_scheduler_or_the_pages_fail(tmp_path, monkeypatch):
    no_slack_env(monkeypatch)
    db = str(tmp_path / "c.db")
    Store.open(db, create=True).close()
    stuck, ran = threading.Event(), threading.Event()

    def job():
        ran.set()
        stuck.wait(60)                      # a canary or retention run that hangs

    with SlackEmulator() as emu:
        cfg = config_mod.from_dict({"slack": http_slack(emu, allowed_channels=["C1"])})
        bot = Bot(cfg, db, log=lambda m: None)
        bot.start()
        pages = TracePages(cfg, db, log=lambda m: None)
        pages.start("127.0.0.1:0")
        scheduler = BackgroundScheduler()
        c = Collector(db, "127.0.0.1", 0).start()
        c.checks.update(checks(bot, scheduler, pages))
        try:
            status, body = healthz(c)
            assert status == 503 and body["checks"]["scheduler"].startswith("the scheduler is not running")
            scheduler.start()
            status, body = healthz(c)
            assert status == 200 and body["checks"] == {"slack": "ok", "scheduler": "ok", "pages": "ok"}

            scheduler.add_job(job, "interval", seconds=0.2, id="canary:x", name="canary x", max_instances=1)
            ran.wait(30)
            emu.wait(lambda: healthz(c)[0] == 503, what="the stalled job to show")
            status, body = healthz(c)
            assert "canary x" in body["checks"]["scheduler"] and "still running when due again" in body["checks"]["scheduler"]
            stuck.set()                                       # it finishes: healthy again
            emu.wait(lambda: healthz(c)[0] == 200, what="the job to finish")

            pages.stop()
            bot.stop()
            status, body = healthz(c)
            assert status == 503 and body["status"] == "failing"
            assert body["checks"]["pages"].startswith("not answering") and body["checks"]["slack"].startswith("not answering")
            assert any(p.startswith("pages: not answering") for p in body["problems"])
        finally:
            stuck.set()
            scheduler.shutdown(wait=False)
            c.stop()
