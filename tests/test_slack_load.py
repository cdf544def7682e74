"""The Slack bot when many people ask at once, as in an incident (bench/incident.py measures it)."""

import threading

from whodid import config as config_mod
from whodid.bot.demo import story as demo
from whodid.bot.slack.app import Bot

from slackemu import SlackEmulator, http_slack, no_slack_env
from test_slack import demo_db  # noqa: F401 (the fixture)


def test_ten_people_asking_at_once_are_all_acknowledged_while_answers_are_slow(demo_db, monkeypatch):  # noqa: F811
    """Bolt runs each listener - which acks first - on the bot's thread pool. With the pool
    smaller than the people asking at once, the last ones' acks waited for an answer to finish,
    and Slack (here Bolt's own 3 s limit) gave up on them: "unhandled request"."""
    no_slack_env(monkeypatch)
    with SlackEmulator() as emu:
        cfg = config_mod.from_dict({
            "identity": {"people": demo.story_people()},
            "slack": http_slack(emu, allowed_channels=["C1"])})
        bot = Bot(cfg, demo_db, log=lambda m: None)
        bot.start()
        emu.delays["chat.postMessage"] = 6.0          # every answer holds its worker for a while
        try:
            acks = []
            threads = [threading.Thread(target=lambda: acks.append(emu.slash(bot._server.url, "delete-cluster")))
                       for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [(status, "Tracing" in body) for status, body, _ in acks] == [(200, True)] * 10, acks
        finally:
            emu.delays.clear()
            bot.stop()
