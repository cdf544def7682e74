"""The CLI's promise under abuse: bad input is one line on stderr and exit 2, never a traceback,
and never an answer from a store that failed.

Damaged stores are real stores damaged three ways (random bytes, cut in half, pages overwritten
in the middle); read-only and full disks are real tmpfs mounts (root only)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from whodid.agent import cli as agent_cli
from whodid.bot import cli
from whodid.tracer import Store

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
PAGE = 4096


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("demo") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


def run(capsys, *argv, main=cli.main):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:                # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if ": vacuuming (" not in line]   # vacuum's notice
    assert len(lines) == 1, err
    for w in words:
        assert w in err, err


@pytest.fixture
def mount(tmp_path):
    """mount(size) -> a fresh tmpfs directory; unmounted after the test."""
    made = []

    def make(size="16m"):
        d = tmp_path / f"fs{len(made)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


def read_only(d):
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)


def fill(d):
    """Fill the filesystem of d to the last block."""
    with open(d / "filler", "ab", buffering=0) as fh:
        for chunk in (1 << 16, 512):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass


def events(n, host="h9", start=0):
    return [json.dumps({"v": 1, "kind": "exec", "host": host, "boot": "b", "ts": 1_700_000_000.0 + i, "pid": 100 + i,
                        "start": 5, "argv": [f"cmd-{i}", "x" * 200], "uid": 0, "euid": 0})
            for i in range(start, start + n)]


# --- damaged stores -------------------------------------------------------------------------

def damaged(demo_db, tmp_path, how):
    path = tmp_path / f"{how}.db"
    size = os.path.getsize(demo_db)
    if how == "random":
        path.write_bytes(os.urandom(size))
        return str(path)
    shutil.copy(demo_db, path)
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "pages":
        # the page holding the command every question below asks about, overwritten past its
        # header: the header and every other page are intact, PRAGMA quick_check fails
        data = path.read_bytes()
        page = data.index(b"delete-cluster --name prod") // PAGE
        with open(path, "r+b") as fh:
            fh.seek(page * PAGE + 8)
            fh.write(os.urandom(PAGE - 8))
    return str(path)


QUESTIONS = [
    ["trace", "delete-cluster"],
    ["trace", "delete-cluster", "--json"],
    ["trace", "delete-cluster", "--keep-for", "90d"],
    ["changes", "since:24h"],
]
EVERY_COMMAND = QUESTIONS + [
    ["trace", "/etc/nginx/nginx.conf"],
    ["db", "stats"], ["db", "prune", "--older-than", "1d"], ["db", "vacuum"], ["db", "check"],
    ["token", "add", "web-1"], ["token", "list"], ["token", "revoke", "web-1"],
]


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=" ".join)
@pytest.mark.parametrize("how, words", [("random", "is not a whodid store"), ("truncated", "is damaged")])
def test_a_damaged_store_is_one_line_for_every_command(demo_db, tmp_path, capsys, how, words, argv):
    path = damaged(demo_db, tmp_path, how)
    code, out, err = run(capsys, *argv, "--db", path)
    one_line_error(code, err, words, path)
    if how == "truncated":
        assert "not a whodid store" not in err and "whodid db check" in err


@pytest.mark.parametrize("argv", QUESTIONS + [["db", "check"], ["db", "vacuum"]], ids=" ".join)
def test_a_question_that_reads_a_damaged_page_is_an_error_not_an_answer(demo_db, tmp_path, capsys, argv):
    path = damaged(demo_db, tmp_path, "pages")
    code, out, err = run(capsys, *argv, "--db", path)
    assert code == 2, out
    assert "is damaged" in err and "Traceback" not in err
    assert "Match 1" not in out and "aws eks delete-cluster" not in out


def test_damage_a_question_does_not_read_leaves_its_answer_whole(demo_db, tmp_path, capsys, monkeypatch):
    """Questions do not read the whole store (that is `db check`'s job, minutes on a big one):
    damage elsewhere is found by what reads it, and the answer built from intact pages is
    the same answer the undamaged store gives."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    code, clean, _ = run(capsys, "trace", "delete-cluster", "--json", "--db", demo_db)
    assert code == 0
    path = tmp_path / "elsewhere.db"
    shutil.copy(demo_db, path)
    data = path.read_bytes()
    asked = {data.index(b"delete-cluster --name prod") // PAGE}
    size = len(data)
    victim = next(p for p in range(size // PAGE // 2, size // PAGE) if p not in asked)
    with open(path, "r+b") as fh:
        fh.seek(victim * PAGE)
        fh.write(os.urandom(PAGE))
    code, out, err = run(capsys, "trace", "delete-cluster", "--json", "--db", path)
    assert (code == 2 and "is damaged" in err) or (code == 0 and json.loads(out) == json.loads(clean))
    code, out, err = run(capsys, "db", "check", "--db", path)
    one_line_error(code, err, "is damaged")


def test_db_check_says_ok_on_a_sound_store(demo_db, capsys):
    code, out, _ = run(capsys, "db", "check", "--db", demo_db)
    assert code == 0 and "ok, no damage found" in out


def test_the_agent_refuses_a_damaged_store_in_one_line(demo_db, tmp_path, capsys):
    for how, words in (("random", "not a whodid store"), ("truncated", "is damaged")):
        code = agent_cli.main(["run", "--db", damaged(demo_db, tmp_path, how)])
        _, err = capsys.readouterr()
        one_line_error(code, err, words)


# --- read-only and full disks -----------------------------------------------------------------

@ROOT_ONLY
def test_read_only_filesystem(demo_db, mount, capsys, tmp_path):
    fs = mount()
    shutil.copy(demo_db, fs / "s.db")
    read_only(fs)
    store = str(fs / "s.db")
    # questions read it: a backup or a snapshot mounted read-only is a thing people ask about
    code, out, _ = run(capsys, "trace", "delete-cluster", "--db", store)
    assert code == 0 and "Who:  jim" in out
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(events(3)) + "\n")
    for argv in (["token", "add", "web-1"], ["trace", "delete-cluster", "--keep-for", "9d"], ["ingest", good],
                 ["db", "prune", "--older-than", "1d"], ["db", "vacuum"]):
        code, out, err = run(capsys, *argv, "--db", store)
        one_line_error(code, err, "read-only", store)
        assert "not a whodid store" not in err
    new = str(fs / "new.db")
    code, _, err = run(capsys, "ingest", good, "--db", new)
    one_line_error(code, err, "read-only", new)
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", store, "--html", fs / "p.html")
    one_line_error(code, err, "read-only", str(fs / "p.html"))
    code = agent_cli.main(["run", "--db", store])
    one_line_error(code, capsys.readouterr().err, "read-only", store)


@ROOT_ONLY
def test_full_disk(demo_db, mount, capsys, tmp_path):
    fs = mount("24m")
    store = str(fs / "s.db")
    shutil.copy(demo_db, store)
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(events(4000)) + "\n")
    fill(fs)
    code, out, err = run(capsys, "ingest", lines, "--db", store)
    one_line_error(code, err, "disk full", store)
    assert "not a whodid store" not in err
    for argv in (["token", "add", "web-1"], ["trace", "delete-cluster", "--keep-for", "9d"]):
        code, _, err = run(capsys, *argv, "--db", store)
        one_line_error(code, err, "disk full", store)
    new = str(fs / "new.db")
    code, _, err = run(capsys, "ingest", lines, "--db", new)
    one_line_error(code, err, "disk full", new)
    page = fs / "p.html"
    os.remove(new)
    fill(fs)
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", demo_db, "--html", page)
    one_line_error(code, err, "disk full", str(page))
    assert not page.exists() and not [p for p in os.listdir(fs) if p.endswith(".tmp")]
    # space comes back: the same command stores everything, and the store is sound
    os.remove(fs / "filler")
    code, out, err = run(capsys, "ingest", lines, "--db", store)
    assert code == 0, err
    assert "4000 of 4000 events accepted" in out
    assert Store.open(store).check() == []


@ROOT_ONLY
def test_a_full_disk_mid_ingest_says_how_much_was_stored(mount, capsys, tmp_path):
    fs = mount("3m")
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(events(30000)) + "\n")
    code, _, err = run(capsys, "ingest", lines, "--db", fs / "s.db")
    one_line_error(code, err, "disk full", str(fs / "s.db"), "the same command again stores the rest")
    stored = int(err.split(" events from ")[0].rsplit(". ", 1)[1].replace(",", ""))
    assert Store.open(fs / "s.db").counts()["execs"] == stored


# --- files the CLI writes, and numbers ---------------------------------------------------------

@pytest.mark.parametrize("flag", ["--html", "--png"])
def test_pages_into_a_missing_directory(demo_db, tmp_path, capsys, flag):
    target = tmp_path / "no" / "such" / ("t.html" if flag == "--html" else "t.png")
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", demo_db, flag, target)
    one_line_error(code, err, "there is no directory", str(target.parent))
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", demo_db, flag, tmp_path)
    one_line_error(code, err, str(tmp_path))


@pytest.mark.parametrize("args, words", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "-1"], "--limit must be at least 1"),
    (["--limit", str(10**30)], "--limit must be at most"),
    (["--limit", "abc"], "invalid int value"),
    (["--keep-for", "0s"], "--keep-for wants a duration"),
    (["--keep-for", "1000000000000d"], "durations go up to 100 years"),
    (["--keep-for", "99999999999999999999999d"], "durations go up to 100 years"),
    (["--keep-for", "-5d"], "--keep-for"),
    (["--keep-for", "soon"], "is not a duration"),
    (["--since", "99999999999999999999d"], "durations go up to 100 years"),
    (["--scope", "9"], "invalid choice"),
])
def test_absurd_numbers(demo_db, capsys, args, words):
    code, _, err = run(capsys, "trace", "delete-cluster", "--db", demo_db, *args)
    one_line_error(code, err, words)


@pytest.mark.parametrize("argv, words", [
    (["changes", "since:99999999999999999999d"], "durations go up to 100 years"),
    (["db", "prune", "--older-than", "99999999999999999999d"], "durations go up to 100 years"),
    (["db", "explode"], "invalid choice"),
    (["import-audit", "/"], "cannot read /: not a file"),
    (["ingest", "/"], "cannot read /"),
    (["trace"], "required"),
])
def test_absurd_arguments_elsewhere(demo_db, capsys, argv, words):
    code, _, err = run(capsys, *argv, "--db", demo_db)
    one_line_error(code, err, words)


@pytest.mark.parametrize("argv, words", [
    (["run", "--db", "x.db", "--ringbuf-pages", "3"], "power of 2"),
    (["run", "--db", "x.db", "--ringbuf-pages", str(10**20)], "power of 2"),
    (["run", "--db", "x.db", "--flush-interval", "-1"], "--flush-interval"),
    (["forward", "--batch-events", "0", "--collector", "http://127.0.0.1:9"], "--batch-events"),
    (["run", "--bogus"], "unrecognized arguments"),
])
def test_the_agents_absurd_numbers(tmp_path, capsys, argv, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv, main=agent_cli.main)
    one_line_error(code, err, words)


def test_the_agent_forwards_no_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WHODID_AGENT_TOKEN", "wdt_x")
    code = agent_cli.main(["forward", str(tmp_path / "nope.jsonl"), "--collector", "http://127.0.0.1:9",
                           "--spool", str(tmp_path / "spool.db")])
    one_line_error(code, capsys.readouterr().err, "cannot read", "nope.jsonl")


# --- ingest keeps what is good --------------------------------------------------------------

def test_ingest_keeps_the_good_lines_of_a_file_with_bad_ones(tmp_path, capsys):
    good = events(4)
    f = tmp_path / "mixed.jsonl"
    raw = "\n".join([good[0], "not json", good[1], '{"v": 1, "kind": "exec"}', "",
                     good[2], '{"v": 1, "kind": "exec", "host": "h", "boot": "b", "ts": "noon"}',
                     good[3]]).encode() + b"\n\xff\xfe garbage \x00\n"
    f.write_bytes(raw)
    db = tmp_path / "s.db"
    code, out, err = run(capsys, "ingest", f, "--db", db)
    assert code == 1 and "Traceback" not in err
    assert Store.open(db).counts()["execs"] == 4
    refused = [line for line in out.splitlines() if line.startswith("  refused ")]
    assert [line.rsplit("(line ", 1)[1].split(" ")[0] for line in refused] == ["2", "4", "7", "9"]
    assert all(str(f) in line for line in refused)


def test_the_console_script_prints_no_traceback(demo_db, tmp_path):
    """Through the installed entry point, as people run it."""
    path = damaged(demo_db, tmp_path, "truncated")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "whodid"), "trace", "x", "--db", path],
                          capture_output=True, text=True, timeout=120)
    one_line_error(done.returncode, done.stderr, "is damaged")


@ROOT_ONLY
def test_a_read_only_store_with_an_unfinished_write_ahead_log_is_one_line(demo_db, mount, capsys, tmp_path):
    """SQLite must write beside such a store to read it; copying it elsewhere is the way."""
    fs = mount()
    live = str(tmp_path / "live.db")
    shutil.copy(demo_db, live)
    src = Store.open(live)
    src.write([json.loads(line) for line in events(3)])    # stays in the -wal while src is open
    shutil.copy(live, fs / "s.db")
    shutil.copy(live + "-wal", fs / "s.db-wal")
    src.close()
    read_only(fs)
    code, out, err = run(capsys, "trace", "delete-cluster", "--db", fs / "s.db")
    one_line_error(code, err, "read-only", str(fs / "s.db"), "write-ahead log")
