"""What /proc says about a process: the facts the kernel's records do not carry (effective
uid, cwd, tty; the login uid, audit session and pid namespace too where the kernel has no
BTF - agent/btf.py) and the processes that were already running when the agent started. Every read may fail - the process may be
gone - and then returns None; the caller falls back to what the process inherited.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    start_ticks: int            # since boot, in clock ticks
    argv: list[str]
    exe: str | None
    cwd: str | None
    uid: int | None
    euid: int | None
    gid: int | None
    egid: int | None
    auid: int | None
    ses: int | None
    tty: str | None
    comm: str


class ProcFS:
    def __init__(self, root: str = "/proc"):
        self.root = root

    def _read(self, pid: int, name: str) -> str | None:
        # os.open/os.read rather than open(): no buffered file object per read. The agent reads
        # a handful of these per exec, and this is its hot path (bench/agent_overhead.py)
        try:
            fd = os.open(f"{self.root}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if len(chunk) < 4096:         # /proc files arrive whole in one read when small
                    break
            return b"".join(chunks).decode("utf-8", "surrogateescape")
        except OSError:
            return None
        finally:
            os.close(fd)

    def _link(self, pid: int, name: str) -> str | None:
        try:
            return os.readlink(f"{self.root}/{pid}/{name}")
        except OSError:
            return None

    def pids(self) -> list[int]:
        return sorted(int(d) for d in os.listdir(self.root) if d.isdigit())

    def status(self, pid: int) -> tuple[str, int, int, int, int] | None:
        """(comm, uid, euid, gid, egid) from one read of /proc/PID/status: the exec path's check
        that /proc still shows the image it is about, and its ids, for the price of one."""
        status = self._read(pid, "status")
        if not status or not status.startswith("Name:"):
            return None
        name = status[5:status.index("\n")].strip() if "\n" in status else ""
        uids = gids = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = line.split()[1:3]
            elif line.startswith("Gid:"):
                gids = line.split()[1:3]
                break
        if not uids or not gids:
            return None
        return name, int(uids[0]), int(uids[1]), int(gids[0]), int(gids[1])

    def ids(self, pid: int) -> tuple[int, int, int, int] | None:
        """(uid, euid, gid, egid) from /proc/PID/status."""
        status = self._read(pid, "status")
        if not status:
            return None
        uids = gids = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = [int(x) for x in line.split()[1:3]]
            elif line.startswith("Gid:"):
                gids = [int(x) for x in line.split()[1:3]]
        if not uids or not gids:
            return None
        return uids[0], uids[1], gids[0], gids[1]

    def login(self, pid: int) -> tuple[int | None, int | None]:
        auid, ses = self._read(pid, "loginuid"), self._read(pid, "sessionid")
        return (int(auid) if auid and auid.strip().isdigit() else None,
                int(ses) if ses and ses.strip().isdigit() else None)

    def cmdline(self, pid: int) -> list[str] | None:
        raw = self._read(pid, "cmdline")
        if not raw:
            return None
        argv = raw.split("\0")
        return argv[:-1] if argv[-1] == "" else argv

    def cwd(self, pid: int) -> str | None:
        return self._link(pid, "cwd")

    def namespace(self, pid: int) -> tuple[int | None, str | None]:
        """(pid namespace inode, container id) - how processes in containers are told apart.
        A process in the agent's own pid namespace is not in a container (containers get their
        own), so its cgroup is not read: most execs on a host are such, and this is per exec."""
        link = self._link(pid, "ns/pid")
        pidns = int(link[link.index("[") + 1:-1]) if link and "[" in link else None
        if pidns is not None and pidns == self.own_pidns:
            return pidns, None
        return pidns, container_id(self._read(pid, "cgroup") or "")

    @property
    def own_pidns(self) -> int | None:
        if not hasattr(self, "_own_pidns"):
            link = self._link("self", "ns/pid")
            self._own_pidns = int(link[link.index("[") + 1:-1]) if link and "[" in link else None
        return self._own_pidns

    def exe(self, pid: int) -> str | None:
        return self._link(pid, "exe")

    def comm(self, pid: int) -> str | None:
        raw = self._read(pid, "comm")
        return raw.strip() if raw else None

    def tty(self, pid: int) -> str | None:
        stat = self._stat(pid)
        return tty_name(int(stat[4])) if stat else None

    def _stat(self, pid: int) -> list[str] | None:
        raw = self._read(pid, "stat")
        if not raw or ")" not in raw:
            return None
        return raw[raw.rindex(")") + 2:].split()     # fields after "pid (comm) "

    def info(self, pid: int) -> ProcInfo | None:
        stat = self._stat(pid)
        raw = self._read(pid, "stat")
        if not stat or raw is None:
            return None
        argv = self.cmdline(pid) or []
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        ids = self.ids(pid) or (None, None, None, None)
        auid, ses = self.login(pid)
        return ProcInfo(pid=pid, ppid=int(stat[1]), start_ticks=int(stat[19]), argv=argv or [f"[{comm}]"],
                        exe=self._link(pid, "exe"), cwd=self.cwd(pid), uid=ids[0], euid=ids[1], gid=ids[2],
                        egid=ids[3], auid=auid, ses=ses, tty=tty_name(int(stat[4])), comm=comm)


_CONTAINER = re.compile(r"(?:docker|containerd|cri-containerd|crio|libpod|podman)[-/:]?([0-9a-f]{64})|"
                        r"/([0-9a-f]{64})(?:\.scope)?$", re.M)


def container_id(cgroup: str) -> str | None:
    """The 64-hex container id in a /proc/PID/cgroup text (docker, containerd, CRI-O, podman,
    kubepods), shortened to 12 characters as `docker ps` shows it; None on the host."""
    m = _CONTAINER.search(cgroup)
    if not m:
        return None
    return (m.group(1) or m.group(2))[:12]


def tty_name(tty_nr: int) -> str | None:
    """The kernel's tty_nr -> `pts/3` or `tty1` (None for no terminal)."""
    if tty_nr == 0:
        return None
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    if major == 4:
        return f"ttyS{minor - 64}"
    return f"tty({major},{minor})"


def boot_id(root: str = "/proc") -> str:
    with open(f"{root}/sys/kernel/random/boot_id") as fh:
        return fh.read().strip()
