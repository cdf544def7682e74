"""sshd's "Accepted ..." lines: who logged in, how, with which key, from where.

`parse_accepted` is pure. `LogFollower` tails a log file (rotation-safe: it reopens when
the file is replaced or truncated) or `journalctl -f`, in a thread, and queues the lines.
The agent ties each login to sshd's per-connection process by the client's address and
port - the same pair its accept() saw - since a log line need not carry a pid.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time
from typing import NamedTuple

ACCEPTED = re.compile(
    r"(?:sshd(?:-session)?\[(?P<pid>\d+)\]:\s+)?"
    r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<addr>\S+) port (?P<port>\d+)"
    r"(?: ssh2)?(?:: (?P<keytype>[A-Z0-9-]+) (?P<fp>(?:SHA256|MD5):\S+))?")
METHODS = {"publickey", "password", "keyboard-interactive", "gssapi-with-mic", "hostbased", "none"}


class Accepted(NamedTuple):
    user: str
    method: str
    addr: str
    port: int
    key_type: str | None
    key_fp: str | None
    pid: int | None           # sshd's pid, when the line came through syslog or the journal


def parse_accepted(line: str) -> Accepted | None:
    m = ACCEPTED.search(line)
    if not m:
        return None
    method = m["method"].split("/", 1)[0]        # keyboard-interactive/pam
    return Accepted(user=m["user"], method=method if method in METHODS else "other", addr=m["addr"],
                    port=int(m["port"]), key_type=m["keytype"], key_fp=m["fp"],
                    pid=int(m["pid"]) if m["pid"] else None)


def default_source() -> str | None:
    """journald where systemd runs, else the usual auth log files."""
    if os.path.isdir("/run/systemd/system") and shutil.which("journalctl"):
        return "journal"
    for path in ("/var/log/auth.log", "/var/log/secure"):
        if os.path.exists(path):
            return path
    return None


class LogFollower:
    """Tail sshd's log into a queue of Accepted records, from the end (new logins only)."""

    def __init__(self, source: str, poll: float = 0.2, parse=None):
        self.source = source
        self.poll = poll
        self.parse = parse or parse_accepted      # the audit tail passes lines through as they are
        self.lines: queue.Queue[tuple[float, Accepted]] = queue.Queue()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="sshd-log", daemon=True)

    def start(self) -> "LogFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc:
            self._proc.terminate()
        self._thread.join(timeout=5)

    def _emit(self, line: str) -> None:
        acc = self.parse(line)
        if acc:
            self.lines.put((time.time(), acc))

    def _lines(self, data: bytes) -> bytes:
        """Emit the complete lines in data; return the unfinished rest."""
        *complete, rest = data.split(b"\n")
        for line in complete:
            self._emit(line.decode("utf-8", "replace"))
        return rest

    def _run(self) -> None:
        if self.source == "journal":
            self._proc = subprocess.Popen(["journalctl", "-f", "-n", "0", "-o", "short", "_COMM=sshd",
                                           "+", "_COMM=sshd-session"], stdout=subprocess.PIPE, text=True)
            for line in self._proc.stdout:
                if self._stop.is_set():
                    return
                self._emit(line)
            return
        fh, ino, pos, partial = None, None, 0, b""
        while not self._stop.is_set():
            try:
                st = os.stat(self.source)
                if fh is None or st.st_ino != ino or st.st_size < pos:
                    if fh:
                        if st.st_ino != ino:          # rotated: what was written before the rename first
                            partial = self._lines(partial + fh.read())
                        fh.close()
                    fh = open(self.source, "rb")
                    if ino is None:
                        fh.seek(0, os.SEEK_END)          # first open: only what comes after us
                    ino, partial = st.st_ino, b""
                data = fh.read()
                pos = fh.tell()
                partial = self._lines(partial + data)
            except OSError:
                pass                                      # rotated away for a moment, or not yet there
            self._stop.wait(self.poll)
        if fh:
            fh.close()
