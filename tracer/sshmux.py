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
- A channel may have been asked for by a client that connected before it (by at most `rtt`
  plus the clocks' `skew`, and not more than `skew` after it) and had not exited before it
  began - nor, for a session, before the session ended (a mux client waits for its session's
  exit status).
- Clients ask in turn and the master serves them in turn; a client also lives as long as its
  session. So the channels and clients near the target are paired as a whole, the most pairs
  first, then the closest fit (connect to channel start, client exit to session end: on a line
  the closest fit keeps the order, and two clients that connected together are told apart by
  their sessions' ends). The target's asker is its client in the best pairing, when every
  pairing that gives the target another client (or none) is worse by more than `skew`; else
  the clients that fit as well are candidates - never a silent guess. When the best pairing
  gives the target no client - each that may have asked fits another channel better - no one is
  named, and those clients are the candidates.
- A local port forward (`ssh -D`, `-L`) is the same shape: its users ask for TCP channels by
  connecting to the forwarded port (`forwarded_ports`); the Tracer gives them as clients with
  `asks=TCP` (trace.py: _shared_forward), and they pair as `-W` clients do.
- Evidence goes missing (a lost event, a request that failed, clocks further apart than
  `skew`): the pairing then leaves a channel or a client unpaired rather than shift every
  pairing after it, and says when it could not decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

SESSION, TCP = "session", "tcp"
RADIUS = 10                         # channels and clients this many windows away bear on no pairing
_BIG = 1e6                          # a pair's weight: more pairs always outweigh a closer fit
MAX_NEAREST = 5                     # clients offered when none may have asked for a channel by time
# a crowd is not paired: each way of explaining the channel is a matching, so the cost grows with
# the cube of the clients near it (80 long-lived clients asking within seconds took 9 s, 160 a
# minute: a flood of `ssh -S sock host true` would stall every trace). Past these, which client
# asked is not known, and the MAX_CROWDED nearest that may have are the candidates
MAX_OPTIONS = 8                     # clients that may have asked for the channel itself
MAX_CROWD = 1500                    # (channel, client) pairs that fit within RADIUS windows of it
MAX_CROWDED = 20

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
    asks: str = ""                  # the channel it asks for when its argv does not say: TCP for a
                                    # process that connected to a forwarded port (a forward's client)


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


def forwarded_ports(argv) -> list[tuple[str | None, int]]:
    """The local ports an ssh listens on for its forwards, as (bind address or None, port):
    `-D [bind:]port`, `-L [bind:]port:host:hostport`, `-o DynamicForward=[bind:]port`, `-o
    LocalForward="[bind:]port host:hostport"`. A forward from a unix socket (`-L /path:h:p`) has
    no port: it is left out. One set in ssh_config is not in the argv, and is not seen."""
    out = []
    for letter, value in _options(argv):
        spec = None
        if letter in "DL" and value:
            spec = value if letter == "D" else _listen_of_local(value)
        elif letter == "o" and value:
            words = value.replace("=", " ", 1).split()
            if len(words) >= 2 and words[0].lower() == "dynamicforward":
                spec = words[1]
            elif len(words) >= 2 and words[0].lower() == "localforward":
                spec = words[1]
        listen = _listen(spec) if spec else None
        if listen is not None:
            out.append(listen)
    return out


def forward_said(argv) -> str:
    """An ssh's forward options as given, for a note: "-D 1080", "-o LocalForward=5432 t:22"."""
    said = [f"-{letter} {value}" for letter, value in _options(argv) if letter in "DL"
            or (letter == "o" and (value or "").lower().startswith(("dynamicforward", "localforward")))]
    return " ".join(said) or "port"


def _listen_of_local(value: str) -> str | None:
    """The listening part of -L's `[bind:]port:host:hostport` (or `[bind:]port:/socket`)."""
    parts = _split(value)
    if len(parts) >= 2 and parts[0].isdigit():
        return parts[0]
    if len(parts) >= 3 and parts[1].isdigit():
        return f"{parts[0]}:{parts[1]}"
    return None


def _listen(spec: str) -> tuple[str | None, int] | None:
    """`[bind:]port` (bind may be `[v6]` or `*`) -> (bind or None, port); None: not a port."""
    parts = _split(spec)
    if not parts or not parts[-1].isdigit():
        return None
    bind = ":".join(parts[:-1]) if len(parts) > 1 else None
    return (bind, int(parts[-1]))


def _split(spec: str) -> list[str]:
    """Split on colons outside [brackets]: `[::1]:1080` -> ['::1', '1080']."""
    parts, cur, depth = [], "", 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


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
         rtt: float, skew: float, opened: float | None = None) -> Pairing:
    """Who asked the master for `target` (one of `channels`, all of one master connection),
    among the clients its master accepted (see the module's rule). `opened`: the master's login
    on the server (its clock); its own first channel opens then, not whenever the first
    recorded one did (that fork lost, `-o SessionType=none` in place of -N)."""
    chans = sorted(channels, key=lambda c: (c.ts, c.proc))
    asks = sorted((c for c in clients if c.asks or not is_control(c.argv)), key=lambda c: (c.ts, c.proc))
    first = chans[0] if own_first and chans else None
    if first is not None and opened is not None and first.ts - opened > rtt + skew:
        first = None                    # the first recorded channel opened long after the login: not its own
    if first is not None and first == target:
        racing = [cl for cl in asks if cl.ts <= target.ts + skew and (cl.until is None or cl.until >= target.ts - skew)
                  and target.ts - cl.ts <= rtt + skew and _asks(cl) == target.kind]
        if not racing or opened is None:
            return Pairing(own=True, why="the master connection's own first channel, opened when it logged in")
        return Pairing(candidates=racing, why="a client asked as the master logged in: whether this is the master's "
                                              "own first channel or that client's is not known")
    if first is not None:
        chans = chans[1:]
    if target not in chans:
        return Pairing(why="the channel is not among the master connection's")
    if not asks:
        return Pairing(why="no client of its control socket was recorded (unix-socket capture off, or its records "
                           "lost), and any process of its owner's uid or root may use it")

    def allowed(ch: Channel, cl: MuxClient) -> bool:
        # a mux client waits for its session's exit status: it cannot have ended before the session
        outlived = ch.kind != SESSION or ch.until is None or cl.until is None or cl.until >= ch.until - skew
        return (_asks(cl) == ch.kind and ch.ts - rtt - skew <= cl.ts <= ch.ts + skew
                and (cl.until is None or cl.until >= ch.ts - skew) and outlived)

    options = [cl for cl in asks if allowed(target, cl)]
    if not options:
        nearest = sorted(asks, key=lambda cl: abs(cl.ts - target.ts))[:MAX_NEAREST]
        return Pairing(candidates=sorted(nearest, key=lambda cl: (cl.ts, cl.proc)),
                       why="no client's request pairs with this channel: a request or a channel was not recorded, "
                           "or the clocks differ by more than allowed")
    # the channels and clients that may bear on this one: within a few windows of it
    radius = RADIUS * (rtt + skew)
    near_ch = [c for c in chans if c != target and abs(c.ts - target.ts) <= radius]
    near_cl = [c for c in asks if abs(c.ts - target.ts) <= radius + rtt + skew]
    edges = [(ch, cl) for ch in near_ch for cl in near_cl if allowed(ch, cl)]
    if len(options) > MAX_OPTIONS or len(edges) > MAX_CROWD:
        nearest = sorted(options, key=lambda cl: abs(cl.ts - target.ts))[:MAX_CROWDED]
        return Pairing(candidates=sorted(nearest, key=lambda cl: (cl.ts, cl.proc)),
                       why=f"{len(options)} clients may have asked for this channel and {len(near_cl)} asked the "
                           f"master within {radius:.0f} s of it: too many to tell which one did"
                           + (f" (the {MAX_CROWDED} nearest in time are listed)" if len(options) > MAX_CROWDED else ""))
    scored = sorted(((_explain(edges, target, o), i, o) for i, o in enumerate([*options, None])),
                    key=lambda x: (-x[0][0], x[0][1], x[1]))
    (pairs, cost), _, best = scored[0]
    # another explanation as good (as many pairs, as close a fit within the clocks' skew)
    close = [o for (p, c), _, o in scored[1:] if p == pairs and c - cost <= skew]
    if best is None:
        return Pairing(candidates=options,
                       why="each client that may have asked for this channel fits another channel better: its "
                           "own request may not have been recorded")
    if not close:
        return Pairing(asker=best, why="the client whose request and lifetime fit the channel, in its turn")
    tied = [best, *(o for o in close if o is not None)]
    return Pairing(candidates=sorted(tied, key=lambda cl: (cl.ts, cl.proc)),
                   why=f"{len(tied)} clients fit the channel as well as each other: which one asked is not known")


def _asks(cl: MuxClient) -> str:
    return cl.asks or asks_for(cl.argv)


def _cost(ch: Channel, cl: MuxClient) -> float:
    """How far a client is from fitting a channel, in seconds: its connect to the channel's start,
    and - a session - its exit to the session's end."""
    ends = abs(cl.until - ch.until) if ch.kind == SESSION and ch.until is not None and cl.until is not None else 0.0
    return abs(ch.ts - cl.ts) + ends


def _explain(edges: list[tuple[Channel, MuxClient]], target: Channel, forced: MuxClient | None) -> tuple[int, float]:
    """The best pairing of the other channels and clients with `target` given to `forced` (None:
    to no one): (pairs, total cost), the most pairs first, then the least cost. On a line the
    least-cost pairing keeps order, so requests served in turn pair in turn; a crossing wins only
    where the sessions' ends say so (two clients that connected together)."""
    g = nx.Graph()
    for ch, cl in edges:
        if cl is not forced:
            g.add_edge(("ch", ch), ("cl", cl), weight=_BIG - _cost(ch, cl))
    matched = nx.max_weight_matching(g, maxcardinality=True)
    pairs = len(matched) + (forced is not None)
    cost = sum(_BIG - g[a][b]["weight"] for a, b in matched) + (_cost(target, forced) if forced else 0.0)
    return pairs, round(cost, 6)
