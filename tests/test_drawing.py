"""Trace pictures drawn in a process of their own (bot/drawing.py): the same picture as drawn
here, never drawn in the bot's process (where it held the interpreter from the collector's
writer), and a drawing process that dies is replaced without losing the picture."""

import os
import signal

import pytest

from whodid import config as config_mod
from whodid.bot.demo import story as demo
from whodid.bot.drawing import Painter
from whodid.bot.slack.app import Bot
from whodid.tracer.render import image
from whodid.tracer.render.image import render_png

from slackemu import SlackEmulator, http_slack, no_slack_env
from test_image import NOW, trace_of
from test_slack import answered, demo_db  # noqa: F401 (the fixture)
from test_trace import shared_account_story


def test_the_picture_is_drawn_in_another_process_and_is_the_same_picture():
    tr = trace_of(shared_account_story())
    painter = Painter().start()
    try:
        worker = painter.warmed.result(120)
        assert worker != os.getpid()
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
    finally:
        painter.close()


def test_the_drawing_process_runs_below_the_bot_so_the_record_is_written_first():
    from whodid.bot import drawing
    painter = Painter().start()
    try:
        worker = painter.warmed.result(120)

        def nice(pid):
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])
        assert drawing.NICE > 0
        assert nice(worker) == min(19, nice(os.getpid()) + drawing.NICE)
    finally:
        painter.close()


def test_a_drawing_process_that_dies_is_replaced_and_the_picture_still_comes():
    tr = trace_of(shared_account_story())
    painter = Painter().start()
    try:
        first = painter.warmed.result(120)
        os.kill(first, signal.SIGKILL)
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
        assert painter.draw(tr, NOW)[:4] == b"\x89PNG"         # and the one after, from the new worker
        assert painter.pid() not in (None, first)
    finally:
        painter.close()


def test_a_closed_painter_still_draws_here():
    tr = trace_of(shared_account_story())
    painter = Painter()
    painter.close()
    assert painter.draw(tr, NOW) == render_png(tr, NOW)


def test_the_slack_bot_draws_its_pictures_outside_its_own_process(demo_db, monkeypatch):  # noqa: F811
    """Drawing in the bot's process is broken here: the answer's picture must come anyway."""
    no_slack_env(monkeypatch)

    def not_here(*a, **kw):
        raise AssertionError("drawn in the bot's own process")
    monkeypatch.setattr(image, "render_png", not_here)
    with SlackEmulator() as emu:
        cfg = config_mod.from_dict({
            "identity": {"people": demo.story_people()},
            "slack": http_slack(emu, allowed_channels=["C1"])})
        bot = Bot(cfg, demo_db, log=lambda m: None)
        bot.start()
        try:
            status, _, _ = emu.slash(bot._server.url, "delete-cluster")
            assert status == 200
            _, thread = answered(emu)
            (pic,) = [m for m in thread if m.files]
            data = emu.uploads[pic.files[0]["id"]]["data"]
            assert data[:4] == b"\x89PNG"
            assert not any("could not be drawn" in m.text for m in emu.messages)
        finally:
            bot.stop()



def test_where_no_drawing_process_can_start_pictures_are_drawn_here(monkeypatch):
    """A sandbox without POSIX semaphores (or fork): the bot must still start and draw."""
    import whodid.bot.drawing as drawing

    def refused(*a, **kw):
        raise PermissionError(13, "Permission denied: /dev/shm")
    monkeypatch.setattr(drawing, "ProcessPoolExecutor", refused)
    tr = trace_of(shared_account_story())
    painter = Painter().start()
    try:
        assert painter.cannot and "Permission denied" in painter.cannot
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
    finally:
        painter.close()


def test_a_picture_that_cannot_be_drawn_raises_to_the_bot_and_the_next_one_draws():
    """A drawing bug in the worker comes back as the exception (the bot then posts the chain
    without the picture), and the worker lives on."""
    import pytest
    tr = trace_of(shared_account_story())
    painter = Painter().start()
    try:
        with pytest.raises(AttributeError):
            painter.draw("not a trace", NOW)
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
    finally:
        painter.close()


# a pool manager thread dying on a cancelled picture (InvalidStateError) fails the test
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_wedged_drawing_process_is_replaced_not_waited_on_again(monkeypatch):
    """A worker that stops answering (stopped, stuck in a picture): the picture asked for is
    drawn here after DRAW_TIMEOUT, and the next one goes to a new worker - not queued behind
    the wedged one to wait out the timeout again, each time, for the bot's life - and the
    wedged process is not left behind."""
    import whodid.bot.drawing as drawing
    tr = trace_of(shared_account_story())
    painter = Painter().start()
    wedged = painter.warmed.result(120)
    here = []
    real_here = drawing.draw_here
    monkeypatch.setattr(drawing, "draw_here", lambda t, n: here.append(1) or real_here(t, n))
    try:
        os.kill(wedged, signal.SIGSTOP)
        monkeypatch.setattr(drawing, "DRAW_TIMEOUT", 1.0)
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
        assert len(here) == 1                                   # drawn here, the worker wedged
        monkeypatch.setattr(drawing, "DRAW_TIMEOUT", 120.0)
        assert painter.draw(tr, NOW) == render_png(tr, NOW)
        assert len(here) == 1                                   # by a new worker this time
        assert painter.pid() not in (None, wedged)
        assert not _alive(wedged)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(wedged, sig)
            except ProcessLookupError:
                pass
        painter.close()


def _alive(pid: int) -> bool:
    """Whether pid is still there - running, stopped, or a zombie nobody reaped."""
    return os.path.exists(f"/proc/{pid}")


# a pool manager thread dying on a cancelled picture (InvalidStateError) fails the test
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_everyone_waiting_on_a_wedged_drawing_process_gets_the_picture(monkeypatch):
    """Several people asking while the worker is wedged: the first to time out replaces it, and
    the others' pictures - queued behind it, cancelled with it - still come (drawn again), not
    'could not be drawn'."""
    import threading
    import whodid.bot.drawing as drawing
    tr = trace_of(shared_account_story())
    want = render_png(tr, NOW)
    painter = Painter().start()
    wedged = painter.warmed.result(120)
    got, failed = [], []

    def ask():
        try:
            got.append(painter.draw(tr, NOW))
        except Exception as exc:                  # what the bot would post as "could not be drawn"
            failed.append(repr(exc))
    try:
        os.kill(wedged, signal.SIGSTOP)
        monkeypatch.setattr(drawing, "DRAW_TIMEOUT", 2.0)
        askers = [threading.Thread(target=ask) for _ in range(6)]
        for a in askers:
            a.start()
        for a in askers:
            a.join()
        assert failed == []
        assert got == [want] * 6
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(wedged, sig)
            except ProcessLookupError:
                pass
        painter.close()


# a pool manager thread dying on a cancelled picture (InvalidStateError) fails the test
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_everyone_waiting_when_the_drawing_process_dies_gets_the_picture():
    """Six pictures queued when the worker is killed: each is drawn again by the next worker
    (or here), none lost as cancelled, and the dead pool's manager is not left to die on them."""
    import threading
    import time
    tr = trace_of(shared_account_story())
    want = render_png(tr, NOW)
    painter = Painter().start()
    worker = painter.warmed.result(120)
    got, failed = [], []

    def ask():
        try:
            got.append(painter.draw(tr, NOW))
        except Exception as exc:                  # what the bot would post as "could not be drawn"
            failed.append(repr(exc))
    try:
        os.kill(worker, signal.SIGSTOP)
        askers = [threading.Thread(target=ask) for _ in range(6)]
        for a in askers:
            a.start()
        while len(painter._pool._pending_work_items) < 6:      # all six queued (not a timing)
            time.sleep(0.01)
        os.kill(worker, signal.SIGKILL)
        for a in askers:
            a.join()
        assert failed == []
        assert got == [want] * 6
    finally:
        painter.close()
