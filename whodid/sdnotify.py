"""Telling the service manager how we are: systemd's notify protocol (sd_notify(3)), no library.

A unit with `Type=notify` starts the daemon with $NOTIFY_SOCKET naming an AF_UNIX datagram
socket (a path, or an abstract name written with a leading @), and counts the service started
only when the daemon sends `READY=1` there; `STOPPING=1` says a stop has begun, `STATUS=...` is
the one line `systemctl status` shows. So `whodid serve` says READY once it listens (before it,
a dependent unit or a load balancer would be refused) and `whodid-agent run` once its probes are
attached (before it, what ran was not recorded).

Rules: without $NOTIFY_SOCKET every call does nothing (run by hand, in a container, under
another supervisor). A message that cannot be sent never stops the daemon - the manager then
reports its own start timeout - but says why in one line, once. Only `unix` addresses are
spoken; a vsock address (systemd 254+, for virtual machines) is refused with a line saying so.
"""

from __future__ import annotations

import os
import logging
import socket

_warned = False


def address(value: str) -> str | None:
    """The socket address $NOTIFY_SOCKET names, as socket.connect takes it: a path, or an
    abstract name (leading @ -> leading NUL). None for what this module does not speak."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ=os.environ) -> bool:
    """Send `state` (lines of KEY=VALUE) to the service manager; True if it was sent."""
    global _warned
    where = environ.get("NOTIFY_SOCKET")
    if not where:
        return False
    addr = address(where)
    try:
        if addr is None:
            raise OSError(f"unsupported address {where!r} (only a path or an @abstract name)")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError as exc:
        if not _warned:
            _warned = True
            logging.getLogger("whodid").warning(
                f"could not tell the service manager {state.splitlines()[0]} through $NOTIFY_SOCKET={where}: "
                f"{exc.strerror or exc}; under systemd the unit will time out starting - check the unit's "
                "NotifyAccess= and that nothing unset the variable")
        return False


def status_line(text: str) -> str:
    """STATUS= carries one line; a newline would start a new (bogus) assignment."""
    return " ".join(text.split())[:200]


def ready(status: str = "") -> bool:
    """Started and doing its job."""
    return notify("READY=1" + (f"\nSTATUS={status_line(status)}" if status else ""))


def stopping(status: str = "stopping") -> bool:
    """A stop has begun (SIGTERM): what follows is flushing, not a hang."""
    return notify(f"STOPPING=1\nSTATUS={status_line(status)}")
