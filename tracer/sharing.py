"""Sessions shared between people: a tmux or screen server, an ssh master connection.

A process tree says who *started* such a session, not who used it: a multiplexer's shells are
children of the server one person started while anyone who reaches its socket can attach and
type; an ssh master carries new sessions for whoever reaches its control socket. The agent
records the unix-socket connects that show who used them (`uconnect`/`uaccept`, docs/events.md);
the Tracer finds a shared session on a chain (trace.py), the rules in multiplexer.py (tmux,
screen) and sshmux.py (ssh masters) decide what it says about who did it, and every view -
text, JSON, picture, page, Slack - draws it from these types.

What the evidence supports is said and no more: a client *attached* when the command ran could
have typed it, which is not "typed by" (root can write to a pane's tty without attaching).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .stitch import Attribution

TMUX, SCREEN, SSH_MASTER, SSH_FORWARD = "tmux", "screen", "ssh-master", "ssh-forward"
KINDS = (TMUX, SCREEN, SSH_MASTER, SSH_FORWARD)     # ssh-forward: an ssh's -D/-L port forward

# a client's role in a shared session
ATTACHED = "attached"     # connected to a multiplexer's socket while the command ran
INJECTED = "injected"     # a one-shot client that sent keys into it just before (send-keys, -X stuff)
ASKED = "asked"           # the ssh client that asked a master for the session the command ran in
USED = "used"             # a process whose connect to an ssh's forwarded port the hop came through
ROLES = (ATTACHED, INJECTED, ASKED, USED)


@dataclass
class SessionClient:
    """A process that used a shared session, traced to its own login as any command is."""
    role: str                       # one of ROLES
    proc: int                       # the client process (store id)
    host: str
    pid: int
    command: str                    # its command line as recorded (redacted as every command is)
    since: float | None             # its connect to the socket
    until: float | None             # its process's exit; None: still open, or its exit not recorded
    who: Attribution                # the client's own chain, attributed (stitch.attribute)
    summary: str                    # that chain in one line (stitch.summary)
    doubt: str = ""                 # why it may have left before: no exit recorded, yet its parent
                                    # had exited or the host lost records since its connect


@dataclass
class SharedSession:
    """A multiplexer server or ssh master on a chain, who started it, and who used it."""
    kind: str                       # one of KINDS
    host: str                       # where the server or the master runs
    proc: int                       # the server or master process (store id)
    pid: int
    path: str | None                # its socket: the path clients connected to (a forward: its ports)
    step: int                       # index into Trace.chain of the step it is drawn at: the server's
                                    # step (multiplexer), or the ssh hop it carried (master, forward)
    starter: Attribution            # who started it, by its own process chain
    clients: list[SessionClient] = field(default_factory=list)
    note: str = ""                  # one line for people: "tmux server started by jim; bob attached"
