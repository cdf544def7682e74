"""What unix-socket capture costs the host (issue 19): a storm of unix connects, timed with no
recorder and with whodid's agent, in alternating rounds so the machine's noise hits both.

The storm is a small C loop (compiled here with cc: a Python loop would hide the syscall's cost
under its own): socket, connect, [accept], close, N times, reporting ns per iteration. Modes:

- unwatched, ENOENT: connect to a missing path nobody watches - the kernel filter's cost alone;
- unwatched, accepted: a full connection to a listener nobody watches - plus the accept probe's
  walk from the new fd to its socket and one hash miss;
- watched, accepted: the same under /tmp/tmux- - both records made and shipped.

The ratio that counts is the unwatched one (most unix connects on a busy host: dbus, journald,
nscd): target at most 1.10. The agent's ratio includes its general syscall tracing, which it pays
with or without unix capture. `.venv/bin/python bench/unix_connect.py [--connects 100000] [--rounds 5]`
`--unbudgeted` adds the agent without its connection budget (agent.connection_budget.per_second 0):
with it, a watched storm of 100,000 connects is mostly over budget (not recorded, only counted).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402

STORM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {          /* storm N listen|missing PATH */
    int n = atoi(argv[1]), listening = !strcmp(argv[2], "listen"), l = -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, argv[3], sizeof(sa.sun_path) - 1);
    if (listening) {
        unlink(argv[3]);
        l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(l, (void *)&sa, sizeof sa) || listen(l, 128)) { perror(argv[3]); return 1; }
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (void *)&sa, sizeof sa) == 0 && l >= 0)
            close(accept(l, NULL, NULL));
        close(s);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    if (l >= 0) unlink(argv[3]);
    return 0;
}
"""


def storm(binary: Path, n: int, mode: str, path: str) -> float:
    out = subprocess.run([str(binary), str(n), mode, path], capture_output=True, text=True, check=True)
    return float(out.stdout)


class Agent:
    def __init__(self, work: Path, config: Path | None = None):
        self.work = work
        self.config = config

    def __enter__(self):
        ready = self.work / "agent.ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--out",
                                      str(self.work / "agent.jsonl"), "--auth-log", "none", "--ready-file",
                                      str(ready)] + (["--config", str(self.config)] if self.config else []),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            time.sleep(0.2)
        return self

    def __exit__(self, *_):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connects", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--unbudgeted", action="store_true", help="also the agent with no connection budget")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="whodid-bench-unix-") as tmp:
        work = Path(tmp)
        (work / "storm.c").write_text(STORM)
        subprocess.run(["cc", "-O2", "-o", str(work / "storm"), str(work / "storm.c")], check=True)
        watched_dir = Path(f"/tmp/tmux-bench-{os.getpid()}")
        watched_dir.mkdir(exist_ok=True)
        modes = {"unwatched, ENOENT": ("missing", str(work / "missing.sock")),
                 "unwatched, accepted": ("listen", str(work / "other.sock")),
                 "watched, accepted": ("listen", str(watched_dir / "s"))}
        times: dict[tuple[str, str], list[float]] = {}
        unlimited = work / "unbudgeted.yaml"
        unlimited.write_text('{"agent": {"connection_budget": {"per_second": 0}}}')
        recorders = {"none": None, "whodid agent": None}
        if args.unbudgeted:
            recorders["agent, no budget"] = unlimited
        try:
            for _ in range(args.rounds):
                for recorder, config in recorders.items():
                    if recorder == "none":
                        for name, (mode, path) in modes.items():
                            times.setdefault((recorder, name), []).append(storm(work / "storm", args.connects,
                                                                                mode, path))
                        continue
                    with Agent(work, config):
                        for name, (mode, path) in modes.items():
                            times.setdefault((recorder, name), []).append(storm(work / "storm", args.connects,
                                                                                mode, path))
        finally:
            watched_dir.rmdir()
    print(f"unix connect storm: {args.connects} connects per run, {args.rounds} alternating rounds (medians), "
          f"{os.cpu_count()} cores; agent with its default config (unix_sockets watches /tmp/tmux-)")
    unbudgeted = ("agent, no budget" in recorders)
    print(f"{'mode':<22} {'none ns':>9} {'agent ns':>9} {'ratio':>7}"
          + (f" {'no-budget ns':>13} {'ratio':>7}" if unbudgeted else ""))
    ratios = {}
    for name in modes:
        none, agent = statistics.median(times[("none", name)]), statistics.median(times[("whodid agent", name)])
        ratios[name] = agent / none
        line = f"{name:<22} {none:>9.0f} {agent:>9.0f} {ratios[name]:>7.3f}"
        if unbudgeted:
            free = statistics.median(times[("agent, no budget", name)])
            line += f" {free:>13.0f} {free / none:>7.3f}"
        print(line)
    result("unix connect, unwatched: time with agent / without", round(ratios["unwatched, ENOENT"], 3), 1.10,
           "lower", "x")


if __name__ == "__main__":
    main()
