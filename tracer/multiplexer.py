"""Terminal multiplexers (tmux, screen): who could have typed a command that ran in one.

A multiplexer's shells are children of a server that one person started, while anyone who
reaches its socket can attach and type, or send keys without attaching (`tmux send-keys`,
`screen -X stuff`). The process tree names only the starter. These rules decide, from the
clients connected to the server's socket (the agent's uconnect/uaccept, store.unix_clients),
who was there when the command ran; the Tracer (trace.py) fetches the facts and traces each
client to its login as it traces any command. Pure functions: tested on small fixtures in
tests/test_multiplexer.py.

The rules (docs/attribution.md, "Shared sessions: tmux and screen"):
- a client is *attached* at T when it connected at or before T and its process had not exited
  by T (or no exit is recorded); one that left within the injection window before T *injected*
  when its arguments send input (send-keys, paste-buffer, -X stuff, ...) and counts as attached
  when it may have typed (an attach that just detached: `sleep 5; cmd`, then detach); one that
  only reads (`tmux ls`) is no client of the command;
- exactly one person among those clients: that person, INFERRED, never "typed by" - attached
  says who *could* type (root can write to a pane's tty without attaching);
- an earlier connection whose client went unrecorded has no known end: the note says it may
  still have been attached, beside the one person or in place of "no one";
- more than one person, or any client whose person is unknown (a shared account with no key
  mapping, root): PERSON_UNKNOWN, each client's login and the starter as candidates;
- no client: the starter, as the chain says, with a note that it was a detached job or input
  from a script.
"""

from __future__ import annotations

import dataclasses

from .sharing import ATTACHED, INJECTED, SCREEN, TMUX, SessionClient
from .stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN, Attribution, Candidate, program_name
from .when import clock

MAX_CANDIDATES = 5          # as stitch.attribute lists them; the shared session keeps every client
MAX_SAID = 5                # people named in the note, then "N more"
INJECT_WINDOW = 10.0        # seconds before a command in which a one-shot client's keys count

# tmux commands (with their aliases) that put input into a pane or start a program in the
# session; anything else a one-shot client asks only reads or manages (list, show, kill)
TMUX_INJECTS = {
    "send-keys", "send", "send-prefix", "paste-buffer", "pasteb", "new-window", "neww", "split-window",
    "splitw", "respawn-pane", "respawnp", "respawn-window", "respawnw", "run-shell", "run", "source-file",
    "source", "pipe-pane", "pipep", "if-shell", "if", "command-prompt", "confirm-before", "confirm",
    "display-popup", "popup",
}
# tmux global options that take a value (`tmux -S sock send-keys ...`)
TMUX_VALUED = {"-c", "-f", "-L", "-S", "-T"}
# screen -X commands that put input into a window or start a program in the session
SCREEN_INJECTS = {"stuff", "paste", "exec", "screen", "eval", "source", "at", "process", "readbuf", "register"}
# screen -X commands known to only read or manage; any other (`backtick 1 0 0 cmd` runs a program in
# the server, `idle`, `bind`, `blankerprg`) may start one, and counts as input
SCREEN_READS = {"quit", "detach", "pow_detach", "hardcopy", "info", "windows", "sessionname", "title", "select",
                "number", "lastmsg", "version", "time", "license", "dinfo", "displays", "help", "kill", "remove",
                "redisplay", "clear", "echo", "msgwait", "msgminwait", "other", "next", "prev", "focus",
                "only", "fit", "width", "height", "log", "logfile", "hardcopydir", "colon", "copy", "windowlist"}
# a tmux format that runs a shell command in the server: `tmux display -p '#(rm -rf /srv)'`,
# `tmux ls -F '#(cmd)'` - a command that otherwise only reads then starts a program in the session
TMUX_JOB = "#("


def kind_of(program: str) -> str | None:
    """Which multiplexer a program is ("tmux", "screen"), by its name: screen's server is
    `SCREEN` in argv once it renames itself."""
    name = program_name([program]).lower() if program else ""
    if name == "tmux" or name.startswith("tmux:"):
        return TMUX
    if name == "screen":
        return SCREEN
    return None


def server_kind(parent_program: str, child_program: str) -> str | None:
    """Whether a chain step whose process's parent runs `parent_program` is a window of a
    multiplexer server, and which: a multiplexer's child that is not itself a multiplexer is a
    pane's program (the shell or command it runs). A tmux or screen client forks only its
    server, so a tmux process above a shell is the server, whether or not it exec'd."""
    kind = kind_of(parent_program)
    return kind if kind and kind_of(child_program) is None else None


def _tmux_commands(argv: list[str]) -> list[str]:
    """The commands a tmux command line asks for: the first word after the global options, and
    each word after a `;` separator (`tmux send-keys x Enter \\; detach`)."""
    args, i = argv[1:], 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        opt = args[i]
        i += 2 if opt in TMUX_VALUED else 1
    out = []
    expect = True
    for arg in args[i:]:
        if expect:
            out.append(arg)
            expect = False
        if arg in (";", "\\;") or (arg.endswith(";") and not arg.endswith("\\;")):
            expect = True
    return out


def injects(kind: str, argv: list[str]) -> bool:
    """Whether a one-shot client's command line puts input into the session (types keys,
    pastes, starts a program in it). Unknown commands count: a client not known to only read
    may have typed, and leaving it out could name only the starter."""
    if kind == TMUX:
        cmds = _tmux_commands(argv)
        reads = {"ls", "list-sessions", "list-windows", "lsw", "list-panes", "lsp", "list-clients", "lsc",
                 "list-buffers", "lsb", "list-keys", "lsk", "list-commands", "lscm", "has-session", "has",
                 "display-message", "display", "show-options", "show", "show-window-options", "showw",
                 "show-buffer", "showb", "show-messages", "showmsgs", "show-environment", "showenv",
                 "show-hooks", "info", "server-info", "start-server", "start", "kill-server", "kill-session",
                 "capture-pane", "capturep", "save-buffer", "saveb", "detach-client", "detach", "lock-server",
                 "lock", "lock-session", "locks", "lock-client", "lockc", "wait-for", "wait"}
        return any(c in TMUX_INJECTS or c not in reads for c in cmds) or any(TMUX_JOB in a for a in argv[1:])
    if kind == SCREEN:
        for i, arg in enumerate(argv[1:-1], 1):
            if arg in ("-X", "-Q"):         # -Q asks a question: it only reads
                word = argv[i + 1].lower()
                return arg == "-X" and (word in SCREEN_INJECTS or word not in SCREEN_READS)
        return not any(arg in ("-ls", "-list", "-X", "-Q", "-v", "--version") for arg in argv[1:])
    return False


def _sends(kind: str, argv: list[str]) -> bool:
    """Whether a command line is one of the known ways to send input without attaching."""
    if kind == TMUX:
        return any(c in TMUX_INJECTS for c in _tmux_commands(argv)) or any(TMUX_JOB in a for a in argv[1:])
    return "-X" in argv[1:-1] and injects(kind, argv)


def role(kind: str, argv: list[str], since: float | None, until: float | None, at: float,
         window: float = INJECT_WINDOW) -> str | None:
    """A client connection's role in a command that ran at `at`: ATTACHED when connected then
    (connected at or before, not exited before); for one that had left in the `window` seconds
    before (a one-shot `send-keys`, or someone who typed `sleep 5; cmd` and detached): INJECTED
    when its command line sends input, ATTACHED when it may have typed (an attach, an unknown
    command); else None (it came later, left before the window, or only read)."""
    if since is None or since > at:
        return None
    if until is None or until >= at:
        return ATTACHED
    if at - until > window or not injects(kind, argv):
        return None
    return INJECTED if _sends(kind, argv) else ATTACHED


def label(kind: str) -> str:
    return "screen" if kind == SCREEN else "tmux"


def who_said(who: Attribution) -> str:
    """A person's name for notes, or what is known of a login that names no one."""
    if who.known:
        return who.user
    return f"a login as {who.account} (person unknown)" if who.account else "an unknown person"


def what_it_did(kind: str, client: SessionClient, server_pid: int) -> str:
    """The evidence a client's connection is, in words."""
    name = label(kind)
    if client.role == INJECTED:
        return (f"sent input to the {name} server (pid {server_pid}) at {clock(client.since)}: "
                f"`{client.command}` (pid {client.pid})")
    until = f"to {clock(client.until)}" if client.until is not None else "on (no exit recorded)"
    doubt = f"; it may have left before: {client.doubt}" if client.doubt else ""
    return (f"attached to the {name} server (pid {server_pid}) from {clock(client.since)} {until}: "
            f"`{client.command}` (pid {client.pid}){doubt}")


def decide(kind: str, server_pid: int, starter: Attribution, clients: list[SessionClient],
           unseen: int = 0, kept: Attribution | None = None,
           unrecorded: list[float] | None = None) -> tuple[Attribution, str]:
    """The attribution of a command that ran in a multiplexer session, and the note that says
    why: `starter` is who started the server (by its own chain), `clients` those attached or
    injecting when the command ran (role set), `unseen` connections whose client process is not
    known (counted as unknown people), `kept` what to answer when no client was there (the
    chain's own attribution; default the starter's), `unrecorded` when earlier connections
    whose client is not known began (no end known: they may still have been attached)."""
    name = label(kind)
    started = f"started by {who_said(starter)}"
    if not clients and not unseen:
        note = (f"no client was attached to the {name} server (pid {server_pid}, {started}) when it ran: "
                "a detached job or input from a script")
        out = dataclasses.replace(kept or starter)
        if unrecorded:
            # a connection whose client went unrecorded has no known end: "no one was there" is
            # then what the record shows, not what is known
            n = len(unrecorded)
            note = (f"no recorded client was attached to the {name} server (pid {server_pid}, {started}) when it "
                    f"ran, but {n} connection{'s' if n != 1 else ''} from a client the agent did not record "
                    f"(from {clock(unrecorded[0])}) may still have been")
            if out.confidence == OBSERVED:
                out.confidence = INFERRED
        out.notes = [*out.notes, note]
        return out, note
    people = list(dict.fromkeys(c.who.user for c in clients if c.who.known))
    unknown = [c for c in clients if not c.who.known]
    # a person is named only by a client known to be there: one whose exit may have been lost
    # (its parent gone, records lost since) is a candidate, never the answer on its own
    sure = {c.who.user for c in clients if c.who.known and not c.doubt}
    if len(people) == 1 and not unknown and not unseen and people[0] in sure:
        person = people[0]
        own = [c for c in clients if c.who.user == person]
        first = next((c for c in own if c.role == ATTACHED), own[0])
        roles = {c.role for c in own}
        did = ("the only client attached" if roles == {ATTACHED} else
               "the only one sending it input" if roles == {INJECTED} else
               "the only one attached or sending it input")
        note = f"ran in a {name} session {started}; {person} was {did}"
        if unrecorded:
            # as with no client: an earlier connection whose client went unrecorded has no known
            # end, so "the only one" is what the record shows - someone else may have been there
            n = len(unrecorded)
            note += (f" that was recorded, but {n} connection{'s' if n != 1 else ''} from a client the agent did not "
                     f"record (from {clock(unrecorded[0])}) may still have been attached")
        how = (f"{person} was the only person {'attached to' if roles == {ATTACHED} else 'using'} the {name} "
               f"server (pid {server_pid}) the command ran in; {first.who.how}")
        return Attribution(user=person, host=first.who.host, source=first.who.source,
                           login_time=first.who.login_time, how=how, account=first.who.account,
                           key_fp=first.who.key_fp, notes=list(dict.fromkeys([note, *first.who.notes])),
                           confidence=INFERRED), note
    cands: list[Candidate] = []
    # the strongest evidence first: clients known to be there, the latest to come first (a
    # thousand clients whose exits were lost must not bury the one who just attached)
    ranked = sorted(clients, key=lambda c: (bool(c.doubt), -(c.since or 0.0)))
    for c in ranked:
        _add(cands, _candidates_of(c.who, what_it_did(kind, c, server_pid)))
    mine = _candidates_of(starter, f"started the {name} server (pid {server_pid})")
    _add(cands, mine)
    total = len(cands)
    if total > MAX_CANDIDATES:
        # the starter's login stays listed: who started the server is part of every answer
        # (by its login: where the starter is also a client, _add merged its evidence into that one)
        starters = [c for c in cands if any(_login(c) == _login(m) for m in mine)][:1]
        cands = [c for c in cands if c not in starters][:MAX_CANDIDATES - len(starters)] + starters
    left_out = total - len(cands)
    said = list(dict.fromkeys(who_said(c.who) for c in ranked))
    more = len(said) - MAX_SAID
    said = said[:MAX_SAID] + ([f"{more} more"] if more > 0 else [])
    said += [f"{unseen} client{'s' if unseen != 1 else ''} not recorded"] if unseen else []
    count = len(said)
    note = (f"ran in a {name} session {started}; when it ran, {', '.join(said)} "
            f"{'were' if count > 1 else 'was'} attached or sending it input: who typed it is not known")
    how = (f"the command ran in a {name} session (server pid {server_pid}) that "
           f"{'more than one person' if count > 1 else 'a login naming no person'} could type into")
    notes = [note]
    if left_out:
        notes.append(f"{left_out} more candidate login{'s' if left_out != 1 else ''} left out: the "
                     f"{len(cands)} with the strongest evidence are listed (the shared session lists every client)")
    return Attribution(user=PERSON_UNKNOWN, host=starter.host, source=None, login_time=None, how=how,
                       account=starter.account, notes=notes, confidence=UNKNOWN, candidates=cands), note


def _candidates_of(who: Attribution, evidence: str) -> list[Candidate]:
    """The logins an attribution stands for, each with `evidence` first: its own when it names
    a person, else its candidates (the login of a shared account, root), else its account."""
    if who.known:
        return [Candidate(person=who.user, account=who.account or who.user, host=who.host or "?",
                          login_time=who.login_time or 0.0, source=who.source, key_fp=who.key_fp,
                          evidence=[evidence], named=True)]
    if who.candidates:
        return [dataclasses.replace(c, evidence=[evidence, *c.evidence]) for c in who.candidates]
    return [Candidate(person=who.account or "?", account=who.account or "?", host=who.host or "?",
                      login_time=who.login_time or 0.0, source=who.source, key_fp=who.key_fp,
                      evidence=[evidence, who.how], named=False)]


def _login(c: Candidate) -> tuple:
    """What makes two candidates one login (their evidence aside)."""
    return c.person, c.account, c.host, c.login_time, c.key_fp


def _add(cands: list[Candidate], more: list[Candidate]) -> None:
    """Add candidates, one per login: a login already listed gains the new evidence."""
    for c in more:
        same = next((o for o in cands if _login(o) == _login(c)), None)
        if same is None:
            cands.append(c)
        else:
            same.evidence.extend(e for e in c.evidence if e not in same.evidence)
