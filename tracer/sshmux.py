"""ssh connection sharing: which ssh client asked a master connection for a session.

An ssh master (`ControlMaster`) holds one TCP connection and one login, and carries a new
session for every client that connects to its control socket (`ControlPath`) - any process of
the master's uid, or root. On the server nothing new logs in: the login's session process (sshd's
`user@notty` child) forks a child per session, or - for `-W`, `-J`, a forward - makes a TCP
connect itself. Those are the master connection's *channels*. On the client's host the agent
records each mux client's connect to the control socket, accepted by the master (`uconns`).

The rule (pure; the Tracer gathers the facts, trace.py):
- A client whose argv has `-O` (check, exit, forward, stop...) asks for no channel: dropped.
- A client with `-W` asks for a TCP channel; any other for a session. A master opens a first
  channel of its own unless it was started with `-N`.
- Clients ask in order and the master opens channels in that order (one event loop): the
  channels and the clients are paired by an order-keeping matching in which channel N may pair
  with client C only if C connected before N (by at most `rtt` plus the clocks' `skew`, and not
  more than `skew` after it) and had not exited before N began (a mux client lives as long as
  its session). Of the largest such matchings, the clients that channel N is paired with in
  some are its possible askers: one is the asker - unless another client connected within RACE
  of it (their requests may have crossed); several, and the lifetimes do not settle it (a
  session's client exits when it ends), are candidates - never a silent guess.
- Evidence goes missing (a lost event, a request that failed, clocks further apart than
  `skew`); the matching then leaves a channel or a client unpaired rather than shift every
  pairing after it, and says when it could not decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SESSION, TCP = "session", "tcp"
# a client sends its request within this long of connecting: two that connected closer together
# may have been served in either order, so the order of their connects does not say which asked
RACE = 1.0
MAX_NEAREST = 5                     # clients offered when none may have asked for a channel by time

# ssh's options that take a value (ssh(1), OpenSSH 9); every other letter is a flag
_VALUED = set("BbcDEeFIiJLlmOoPpQRSWw")


@dataclass(frozen=True)
class Channel:
    """A new channel of a master connection, seen on the server: its session process forked
    (a session) or made a TCP connect (-W, -J, a forward). Times on the server host's clock."""
    kind: str                       # SESSION or TCP
    ts: float
    proc: int                       # the forked child, or the process that connected (store id)
    pid: int
    until: float | None = None      # the forked child's exit (a session's end); None: unknown


@dataclass(frozen=True)
class MuxClient:
    """A process that connected to a master's control socket, with its argv then. Times moved
    onto the server host's clock."""
    proc: int
    pid: int
    ts: float                       # its connect to the control socket
    until: float | None             # its exit; None: not recorded, or still running
    argv: tuple[str, ...]


@dataclass
class Pairing:
    """Who asked for one channel: `asker`, or `candidates` when the evidence does not settle it
    (empty: no client may have asked); `own` when it is the master's own first channel."""
    asker: MuxClient | None = None
    candidates: list[MuxClient] = field(default_factory=list)
    own: bool = False
    why: str = ""


def ssh_options(argv: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """ssh's options as {letter: value or None} (the last of a letter given twice): `-fN -o X
    -W h:p host cmd` -> {f, N, o, W}."""
    return dict(_options(argv))


def _options(argv) -> list[tuple[str, str | None]]:
    """ssh's options in order, up to the destination (the first argument that is not one)."""
    out: list[tuple[str, str | None]] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        for j, letter in enumerate(arg[1:], 1):
            if letter in _VALUED:
                value = arg[j + 1:]
                if not value and i < len(args):
                    value, i = args[i], i + 1
                out.append((letter, value))
                break
            out.append((letter, None))
    return out


def is_control(argv) -> bool:
    """A control command (`ssh -O check|exit|stop|forward|cancel`): it asks for no channel."""
    return "O" in ssh_options(argv)


def asks_for(argv) -> str:
    """The kind of channel a mux client asks for: TCP for `-W host:port`, else a session."""
    return TCP if "W" in ssh_options(argv) else SESSION


def is_master(argv) -> bool:
    """Whether an ssh's own arguments make it a master (`-M`, `-o ControlMaster=yes|auto|ask|
    autoask`); one set in ssh_config is not in its argv, and is found by its accepts instead."""
    for letter, value in _options(argv):
        if letter == "M":
            return True
        words = (value or "").replace("=", " ").lower().split()
        if letter == "o" and words[:1] == ["controlmaster"] and words[1:2] != ["no"]:
            return True
    return False


def opens_own_channel(argv) -> bool:
    """Whether a master opens a channel of its own: not with `-N` (`ssh -fN`, ControlPersist)."""
    return "N" not in ssh_options(argv)


def pair(channels: list[Channel], clients: list[MuxClient], target: Channel, *, own_first: bool,
         rtt: float, skew: float) -> Pairing:
    """Who asked the master for `target` (one of `channels`, all of one master connection),
    among the clients its master accepted (see the module's rule)."""
    chans = sorted(channels, key=lambda c: (c.ts, c.proc))
    if own_first and chans and chans[0] == target:
        return Pairing(own=True, why="the master connection's own first channel, opened when it logged in")
    if own_first and chans:
        chans = chans[1:]
    asks = sorted((c for c in clients if not is_control(c.argv)), key=lambda c: (c.ts, c.proc))
    if target not in chans:
        return Pairing(why="the channel is not among the master connection's")
    k = chans.index(target)

    def allowed(ch: Channel, cl: MuxClient) -> bool:
        return (asks_for(cl.argv) == ch.kind and ch.ts - rtt - skew <= cl.ts <= ch.ts + skew
                and (cl.until is None or cl.until >= ch.ts - skew))

    n, m = len(chans), len(asks)
    ok = [[allowed(ch, cl) for cl in asks] for ch in chans]
    # fwd[i][j]: the most pairs among chans[:i] and asks[:j]; back[i][j]: among chans[i:], asks[j:]
    fwd = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            fwd[i][j] = max(fwd[i - 1][j], fwd[i][j - 1], fwd[i - 1][j - 1] + ok[i - 1][j - 1])
    back = [[0] * (m + 2) for _ in range(n + 2)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            back[i][j] = max(back[i + 1][j], back[i][j + 1], back[i + 1][j + 1] + ok[i][j])
    best = fwd[n][m]
    possible = [asks[j] for j in range(m) if ok[k][j] and fwd[k][j] + 1 + back[k + 1][j + 1] == best]
    if len(possible) == 1:
        # the order is of connects; two clients that connected within RACE of each other may have
        # sent their requests, and been served, in either order
        rivals = [cl for cl in asks if cl != possible[0] and abs(cl.ts - possible[0].ts) <= RACE
                  and allowed(target, cl)]
        if not rivals:
            return Pairing(asker=possible[0], why="the client that asked in the channel's turn")
        possible = sorted([possible[0], *rivals], key=lambda cl: (cl.ts, cl.proc))
    if not asks:
        return Pairing(why="no client of its control socket was recorded (unix-socket capture off, or its records "
                           "lost), and any process of its owner's uid or root may use it")
    if not possible:
        # those that may have asked by time alone, else the master's clients nearest in time to it
        near = [cl for cl in asks if allowed(target, cl)] or sorted(
            asks, key=lambda cl: abs(cl.ts - target.ts))[:MAX_NEAREST]
        return Pairing(candidates=sorted(near, key=lambda cl: (cl.ts, cl.proc)),
                       why="no client's request pairs with this channel: a request or a channel was not recorded, "
                           "or the clocks differ by more than allowed")
    # a session's client waits for it to end: the one whose exit matches the channel's end
    if target.until is not None:
        covering = [cl for cl in possible if cl.until is not None and abs(cl.until - target.until) <= skew]
        if len(covering) == 1:
            return Pairing(asker=covering[0], candidates=[],
                           why="of the clients that may have asked in the channel's turn, the only one that "
                               "ended when the session did")
    return Pairing(candidates=possible,
                   why=f"{len(possible)} clients may have asked in the channel's turn: which one did is not known")
