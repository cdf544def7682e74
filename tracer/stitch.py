"""Stitching rules: pure functions that decide how two facts are linked.

trace.py walks the store and asks these functions what each link is; nothing here touches
the store, so every rule is tested on small fixtures (tests/test_stitch.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .events import AUID_UNSET
from .identity import Identity
from .when import clock, format_duration

EDGES = ("login", "fork", "exec", "ssh", "sudo", "su", "setuid")
SWITCH_USER = {"sudo": "sudo", "su": "su", "doas": "sudo", "runuser": "su", "pkexec": "sudo", "sudoedit": "sudo"}
SCHEDULERS = {"cron", "crond", "anacron", "atd", "systemd-run"}


@dataclass
class Step:
    """One link of a chain: a process image (or a login) on a host."""
    node: str
    proc: int
    host: str
    pid: int
    user: str                       # effective user, as the host named it
    login_user: str | None          # the audit login uid's name
    command: str
    argv: list[str]
    start: float
    edge: str = "fork"
    inferred: bool = False
    note: str | None = None
    cwd: str | None = None
    exe: str | None = None
    tty: str | None = None
    container: str | None = None
    pidns: int | None = None        # the pid namespace's inode (unshare, a container runtime)
    inherited: bool = False         # no exec seen: the image is the parent's
    snapshot: bool = False          # the image was read from /proc at agent start, not seen at exec
    login: dict[str, Any] | None = None
    login_uid: int | None = None    # the audit login uid itself; None or AUID_UNSET: none (a service)
    ses: int | None = None          # the audit session id; None or AUID_UNSET: none recorded

    @property
    def program(self) -> str:
        return program_name(self.argv)


def program_name(argv: list[str]) -> str:
    """The program's name as a person would say it: `-bash` -> bash, `/usr/bin/sudo` -> sudo."""
    first = argv[0] if argv else ""
    return os.path.basename(first.lstrip("-")) or first


def link(prev: Step, cur: Step, before: Step | None = None, after: Step | None = None,
         last: bool = False) -> tuple[str, str | None]:
    """What kind of edge leads from prev to cur, and the note a person needs to read it.

    Host change is an ssh hop (the caller has matched it); a change of effective user is a
    privilege change, named after the program that made it (sudo, su, else setuid);
    the same process running a new program is an exec; anything else is a fork.

    sudo and su are setuid-root: the kernel runs them as root before they become the account
    asked for. On a chain (`before` is the step ahead of prev, `after` the one after cur,
    `last` says cur is the end of the chain), that root step is a means, not the target:
    `sudo -u ops` is "jim -> ops via sudo" on the edge where ops begins, the edge into sudo
    says only that it runs as root, and a chain that ends at sudo itself names the account
    from its arguments. Without the neighbours (context edges) each edge reads on its own.
    """
    if prev.host != cur.host:
        return "ssh", None
    via = SWITCH_USER.get(cur.program) or SWITCH_USER.get(prev.program)
    asked = _asked_for(cur) if last else None
    if asked and asked != cur.user:
        # the chain ends at sudo or su itself, before its switch: name what it was asked for
        return via, f"{prev.user} -> {asked} via {via}, as its arguments ask ({cur.program} itself runs as {cur.user})"
    if prev.user != cur.user:
        if SWITCH_USER.get(cur.program) and after is not None and after.host == cur.host and after.user != cur.user:
            # the setuid-root hop on the way: the switch is named where its target begins
            kind = "exec" if prev.proc == cur.proc else "fork"
            return kind, f"{cur.program} runs as {cur.user} on the way from {prev.user} to {after.user}"
        if SWITCH_USER.get(prev.program) and before is not None and before.host == prev.host \
                and before.user != prev.user:
            return via, f"{before.user} -> {cur.user} via {via}"
        if via:
            return via, f"{prev.user} -> {cur.user} via {via}"
        if cur.inherited:       # no exec of its own: the process changed its own credentials
            return "setuid", f"{prev.user} -> {cur.user} via setuid() in {cur.program}"
        return "setuid", f"{prev.user} -> {cur.user} via {cur.program} (setuid)"
    if prev.proc == cur.proc:
        return "exec", None
    return "fork", None


def namespace_change(prev: Step, cur: Step) -> str | None:
    """What a person needs to know when a step runs in another pid namespace than the one before
    it on the same host (`unshare --pid`, a container runtime): that it entered one, and which.
    Without this a containerised command reads as if it ran beside its parent."""
    if prev.host != cur.host or prev.pidns is None or cur.pidns is None or prev.pidns == cur.pidns:
        return None
    where = f"container {cur.container}, " if cur.container and cur.container != prev.container else ""
    return f"in another pid namespace ({where}pid:[{cur.pidns}])"


def _asked_for(step: Step) -> str | None:
    """The account a user-switching step was asked for, when the step is such a program."""
    return requested_user(step.argv) if SWITCH_USER.get(step.program) else None


# options that take a value, per program; any other option is a flag
_VALUED = {
    "sudo": {"-u", "--user", "-g", "--group", "-C", "--close-from", "-D", "--chdir", "-p", "--prompt",
             "-R", "--chroot", "-r", "--role", "-t", "--type", "-T", "--command-timeout", "-U", "--other-user",
             "-h", "--host"},
    "su": {"-c", "--command", "-g", "--group", "-G", "--supp-group", "-s", "--shell", "-w",
           "--whitelist-environment", "--session-command", "-u", "--user"},
    "doas": {"-u", "-C"},
    "pkexec": {"--user"},
}
_USER_OPTION = {"-u", "--user"}
_POSITIONAL_USER = {"su", "runuser"}


def requested_user(argv: list[str]) -> str | None:
    """The account `sudo`, `su`, `runuser`, `doas` or `pkexec` was asked to become, from its
    arguments: `sudo -u ops cmd` -> ops, `su - ops` -> ops, `sudo cmd` -> root. None when argv
    is not such a program. `#1001` (sudo's uid form) reads as "uid 1001", the tracer's name
    for an unnamed uid. Reading arguments is a claim, not an observation: use it only where
    the switch itself was not recorded."""
    prog = program_name(argv)
    kind = {"sudoedit": "sudo", "runuser": "su"}.get(prog, prog)
    if kind not in _VALUED:
        return None
    valued = _VALUED[kind]
    user = None
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if user is None and prog in _POSITIONAL_USER and i < len(args):
                user = args[i]
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in valued and not eq:
                value, i = (args[i] if i < len(args) else ""), i + 1
            if name in _USER_OPTION and (eq or name in valued):
                user = value
            continue
        if arg.startswith("-") and arg != "-":
            for j, flag in enumerate(arg[1:], 1):
                if f"-{flag}" in valued:
                    value = arg[j + 1:]
                    if not value:
                        value, i = (args[i] if i < len(args) else ""), i + 1
                    if f"-{flag}" in _USER_OPTION:
                        user = value
                    break
            continue
        if arg == "-":
            continue
        if prog in _POSITIONAL_USER and user is None:
            user = arg                  # su [options] [-] [user [argument...]]
        break                           # the command sudo, doas or pkexec runs
    user = user or "root"
    if user.startswith("#") and user[1:].isdigit():
        return "root" if int(user[1:]) == 0 else f"uid {int(user[1:])}"
    return user


@dataclass
class HopCandidate:
    proc: int
    ts: float
    laddr: str | None
    lport: int | None
    raddr: str | None
    rport: int | None
    host: str
    host_id: int = 0
    shift: float = 0.0       # added to ts to put it on the login host's clock (measured offsets)


def pick_hop(login: dict[str, Any], exact: list[HopCandidate], by_address: list[HopCandidate],
             skew: float) -> tuple[HopCandidate | None, bool, str | None]:
    """Choose the client side of an ssh login: (candidate, inferred, note).

    `exact` are connects whose local address and port equal the login's peer address and
    port (the 4-tuple seen from both ends); `by_address` are connects from a host owning the
    peer address to the login's server, port unknown. Exact wins; among candidates the
    latest one not after the login wins, else - clocks may differ by `skew` seconds - the
    one nearest after it: a connect made after the login is another's more often than this
    one's seen through a clock running ahead.
    """
    def best(cands):
        """The chosen candidate; `True` with it when its far end is exactly the login's
        server address and port."""
        cands = [c for c in cands if c.ts <= login["ts"] + skew]
        if not cands:
            return None, False
        tight = [c for c in cands if login.get("laddr") is None
                 or (c.raddr in (None, login["laddr"]) and c.rport in (None, login.get("lport")))]
        pool = tight or cands
        before = [c for c in pool if c.ts <= login["ts"]]
        if before:
            return max(before, key=lambda c: (c.ts, c.proc)), bool(tight)
        return min(pool, key=lambda c: (c.ts, -c.proc)), bool(tight)

    hit, tight = best(exact)
    if hit and tight:
        note = (f"connection {hit.laddr}:{hit.lport} -> {login.get('laddr') or hit.raddr}:"
                f"{login.get('lport') or hit.rport} seen on both hosts")
        return hit, False, note
    if hit:
        note = (f"inferred: {hit.host} connected from {hit.laddr}:{hit.lport} to {hit.raddr}:{hit.rport}, "
                f"which reached this host as {login.get('laddr')}:{login.get('lport')} (NAT or a proxy?)")
        return hit, True, note
    hit, _ = best(by_address)
    if hit:
        delta = login["ts"] - hit.ts
        note = (f"inferred: {hit.host} owns {login['raddr']} and connected to this host "
                f"{format_duration(delta)} before the login; source port {login['rport']} was not recorded there")
        return hit, True, note
    return None, False, None


# How sure an attribution is (docs/attribution.md): every link from the person's login to the
# command was seen; some link was inferred (a session id, a reused address, a restart); or the
# evidence does not name a person, and `candidates` say who it could be and why.
OBSERVED, INFERRED, UNKNOWN = "observed", "inferred", "unknown"
PERSON_UNKNOWN = "person unknown"


@dataclass
class Candidate:
    """Someone who may be behind a chain whose person is unknown: a login that was open when the
    chain's process began, with the evidence about *this* process that points at it."""
    person: str                     # the person identity names for the login, else its account
    account: str                    # the account logged in to
    host: str
    login_time: float
    source: str | None              # the address the login came from
    key_fp: str | None
    evidence: list[str] = field(default_factory=list)   # "same audit session 7", "loginuid 1001 is jim"
    # False when nothing names a person for the login (its account is root, shared or a bare
    # uid): `person` then only repeats the account, and no view or JSON may show it as a person
    named: bool = True


@dataclass
class Attribution:
    user: str                       # the person, or PERSON_UNKNOWN
    host: str | None
    source: str | None
    login_time: float | None
    how: str
    account: str | None = None
    key_fp: str | None = None
    notes: list[str] = field(default_factory=list)
    confidence: str = OBSERVED
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def known(self) -> bool:
        """Whether the evidence names a person (observed or inferred)."""
        return self.confidence != UNKNOWN


MAX_CANDIDATES = 5


def is_person_account(account: str | None, identity: Identity) -> bool:
    """Whether an account, by itself, names someone: not a shared account, not root, not a uid
    the host has no name for ("uid 1234"), not unknown ("?")."""
    return bool(account) and account not in ("root", "?") and not account.startswith("uid ") \
        and not identity.is_shared(account)


def _not_a_person(account: str, identity: Identity) -> str:
    if account == "root":
        return "root is not a person"
    if account.startswith("uid ") or account == "?":
        return f"{account} has no name on the host"
    return f"{account} is a shared account"


def origin_segment(chain: list[Step]) -> list[Step]:
    """The chain's steps on its origin's host, up to (not including) the first ssh hop."""
    hop = next((i for i, s in enumerate(chain) if i and s.edge in ("login", "ssh") and s.login), len(chain))
    return chain[:hop]


def rank_candidates(found: list[tuple[int, Candidate]], cap: int = MAX_CANDIDATES) -> tuple[list[Candidate], int]:
    """The strongest `cap` candidates (strength, then the latest login first) and how many more
    were left out. Strength is the caller's score of the evidence: a shared audit session
    outweighs a matching login uid, which outweighs a login merely open at the time."""
    ordered = sorted(found, key=lambda sc: (-sc[0], -sc[1].login_time, sc[1].host, sc[1].account))
    return [c for _, c in ordered[:cap]], max(0, len(ordered) - cap)


def login_doubt(login: dict[str, Any], records: list[dict[str, Any]], session_auid: int | None,
                name_of_auid: str | None) -> str | None:
    """Why a login record may not be its process's own, else None. A login record is sshd's log
    line joined to a process, and anyone can write such a line (`logger -t sshd`): a second record
    for the same process that names someone else, or a session whose processes carry a login uid
    (pam_loginuid sets it to the account logged in to) other than the record's account, says one
    of them is not what sshd wrote."""
    others = {(r["user"], r.get("key_fp")) for r in records} - {(login["user"], login.get("key_fp"))}
    if others:
        said = ", ".join(f"{u}{' with key ' + k if k else ''}" for u, k in sorted(others, key=str))
        return (f"sshd's process has {len(others) + 1} login records ({login['user']}"
                f"{' with key ' + login['key_fp'] if login.get('key_fp') else ''}; {said}): a log line anyone "
                "can write may be one of them, so which login is its own is not known")
    if login.get("uid") is not None and session_auid not in (None, AUID_UNSET) and session_auid != login["uid"]:
        return (f"the login record says {login['user']} (uid {login['uid']}), but the session's processes carry "
                f"login uid {session_auid}{' (' + name_of_auid + ')' if name_of_auid else ''}: the record is not "
                "theirs (a forged or misjoined log line)")
    return None


def _session_of(step: Step) -> tuple[int, int] | None:
    if step.ses in (None, AUID_UNSET) or step.login_uid in (None, AUID_UNSET):
        return None
    return step.login_uid, step.ses


def scheduled_job(chain: list[Step]) -> int:
    """Where the chain's own work begins when a login started a scheduler daemon by hand (`sudo
    cron`, `/etc/init.d/atd start` without systemd): the index of the scheduler step whose child
    began a new audit session (pam_loginuid in cron and atd gives each job its owner's login uid
    and a new session id), else 0. The job is its schedule's - a crontab anyone with that account
    may have written - not the work of the session that started the daemon days before, and the
    kernel says so: the job's session is not the login's."""
    if not chain or not chain[0].login:
        return 0
    for i in range(1, len(chain) - 1):
        daemon, job = chain[i], chain[i + 1]
        if daemon.program not in SCHEDULERS or daemon.proc == job.proc or job.host != daemon.host:
            continue
        below = [s for s in chain[i + 1:] if s.host == daemon.host and not s.login]
        above = [s for s in reversed(chain[1:i + 1]) if s.host == daemon.host]
        theirs = next((_session_of(s) for s in below if _session_of(s)), None)
        mine = next((_session_of(s) for s in above if _session_of(s)), None)
        if theirs and mine and theirs != mine:
            return i
    return 0


def _scheduled_note(chain: list[Step], job: int) -> str:
    lg, daemon = chain[0].login, chain[job]
    child = next((s for s in chain[job + 1:] if _session_of(s)), chain[job + 1])
    return (f"{lg['user']}'s login (from {lg.get('raddr') or 'an unknown address'} at {clock(lg['ts'])}) started "
            f"{daemon.program} (pid {daemon.pid}) by hand, but its job began its own audit session "
            f"{child.ses} (login uid {child.login_uid}) at pid {child.pid}: a scheduled job is its schedule's, "
            f"not the session's that started the scheduler")


def attribute(chain: list[Step], identity: Identity, candidates: list[Candidate] | None = None,
              left_out: int = 0) -> Attribution:
    """Who is behind a chain, and how sure that is (OBSERVED, INFERRED, UNKNOWN).

    A login names a person by its key or account (identity.people), else by its account when
    that is not shared, root or a bare uid. Without a login, the processes' audit login uid
    names the account someone logged in as (cron gives a job its owner's), which is inferred.
    Anything else - a shared account, root, a bare uid, a service with no login uid - is
    PERSON_UNKNOWN: `account` keeps the account, `how` says why no person is named, and the
    candidates are the logins evidence about this chain points at. A chain starting at a login
    has that login as its candidate; for one without, the Tracer gathers `candidates` (ranked,
    with `left_out` more) from the chain's audit sessions, login uids and start time."""
    origin = chain[0]
    inferred = any(s.inferred for s in chain)
    job = scheduled_job(chain)
    if job:
        # the login started the scheduler; the job is the schedule's (its own audit session)
        who = attribute(chain[job:], identity, candidates, left_out)
        who.notes.insert(0, _scheduled_note(chain, job))
        return who
    if origin.login:
        return _attribute_login(chain, identity, inferred)
    notes: list[str] = []
    scheduler = next((s for s in chain if s.program in SCHEDULERS), None)
    if scheduler:
        start = f"no login: scheduled by {scheduler.program} on {scheduler.host}"
    else:
        start = f"no login: the chain starts at the service `{origin.command}` (pid {origin.pid}) on {origin.host}"
    # the login uid nearest the command on the origin's host, before any ssh hop (a hop's
    # login uid is that login's, which is not who started the chain): cron gives a job its
    # owner's. Agents leave an unset one out (docs/events.md), so none recorded reads as none:
    # a service, which no session and no login points at.
    head = origin_segment(chain)
    carrier = next((s for s in reversed(head) if s.login_uid not in (None, AUID_UNSET)), None)
    if carrier is None:
        account = origin.user
        person = identity.person_for_account(account, origin.host) if account != "?" else None
        how = f"{start}, as {account}"
        if person or is_person_account(account, identity):
            # a service of its own account (a pipeline's runner): the account is the actor, but
            # no login was seen to say so
            return Attribution(user=person or account, host=origin.host, source=None, login_time=None,
                               how=how + ", with no login uid: the account is the actor", account=account,
                               notes=notes, confidence=INFERRED)
        how += (f"; {_not_a_person(account, identity)}, and no process on the chain carries a login uid "
                "(a service, not anyone's session), so no evidence names a person")
        return Attribution(user=PERSON_UNKNOWN, host=origin.host, source=None, login_time=None, how=how,
                           account=account, notes=notes, confidence=UNKNOWN)
    name = carrier.login_user or f"uid {carrier.login_uid}"
    person = identity.person_for_account(name, carrier.host)
    said = "no login recorded: the processes carry " + (
        f"{name}'s login uid ({carrier.login_uid})" if not name.startswith("uid ") else f"login uid {carrier.login_uid}")
    if scheduler:
        said += f", scheduled by {scheduler.program} on {scheduler.host}"
    if person or is_person_account(name, identity):
        return Attribution(user=person or name, host=origin.host, source=None, login_time=None, how=said,
                           account=name, notes=notes, confidence=INFERRED)
    cands = list(candidates or [])
    if left_out:
        notes.append(f"{left_out} more candidate login{'s' if left_out != 1 else ''} left out: the "
                     f"{len(cands)} with the strongest evidence are listed")
    if not cands:
        notes.append(f"no login as {name} was open when the chain began on {origin.host}, and none shares its "
                     "audit session: there is no candidate")
    return Attribution(user=PERSON_UNKNOWN, host=origin.host, source=None, login_time=None,
                       how=f"{said}; {_not_a_person(name, identity)}, so no person is named", account=name,
                       notes=notes, confidence=UNKNOWN, candidates=cands)


def _attribute_login(chain: list[Step], identity: Identity, inferred: bool) -> Attribution:
    """A chain that starts at a login: the person its key or account names, corroborated (or
    contradicted) by the keys on later hops; else, for a shared account, root or a bare uid,
    the person is unknown and the login itself - and any person a later hop's key names - are
    the candidates."""
    origin = chain[0]
    lg = origin.login
    logins = [s for s in chain if s.edge in ("login", "ssh") and s.login]
    notes: list[str] = []
    if lg.get("doubt"):
        return _doubted_login(chain, identity)
    key_person = identity.person_for_key(lg.get("key_fp"))
    acct_person = identity.person_for_account(lg["user"], origin.host)
    method = lg.get("method") or "ssh"
    key = f" key {lg['key_fp']}" if lg.get("key_fp") else ""
    if key_person:
        user, how = key_person, f"ssh {method} as {lg['user']} with{key}, which belongs to {key_person}"
    elif acct_person:
        user, how = acct_person, f"ssh {method} as {lg['user']}, an account of {acct_person}"
    elif is_person_account(lg["user"], identity):
        user, how = lg["user"], f"ssh {method} as {lg['user']}{' with' + key if key else ''}"
    else:
        return _unknown_login(chain, identity, notes)
    forwarded = False                   # past a hop through a port forward (trace.py: _shared_forward)
    for later in logins[1:]:
        other = identity.person_for_key(later.login.get("key_fp"))
        if later.login.get("over_master"):
            # the master's login: its key says who opened the master, not who asked for this session
            notes.append(_over_master_note(later, other))
            forwarded = forwarded or later.login["over_master"].get("kind") == "ssh-forward"
        elif other and other != user:
            notes.append(f"conflict: the key used for {later.login['user']}@{later.host} belongs to "
                         f"{other}, not {user}")
        elif other and forwarded:
            # who used a forward is paired by time, never observed: a key beyond it agrees, no more
            notes.append(f"agrees: the key used for {later.login['user']}@{later.host} also belongs to {user}, "
                         "past a port forward whose user was inferred by time")
        elif other:
            notes.append(f"corroborated: the key used for {later.login['user']}@{later.host} also "
                         f"belongs to {user}")
    return Attribution(user=user, host=origin.host, source=lg.get("raddr"), login_time=lg["ts"],
                       how=how, account=lg["user"], key_fp=lg.get("key_fp"), notes=notes,
                       confidence=INFERRED if inferred else OBSERVED)


def _over_master_note(later: Step, key_person: str | None) -> str:
    """What a later login carried over an ssh master says: not "corroborated", not "conflict"."""
    lg, carried = later.login, later.login["over_master"]
    key = f" with key {lg['key_fp']}" + (f" ({key_person}'s)" if key_person else "") if lg.get("key_fp") else ""
    if carried.get("kind") == "ssh-forward":
        used = (f"{carried['asked_by']} used it for this hop" if carried.get("asked_by")
                else "who used it for this hop is not known")
        return (f"the login as {lg['user']}@{later.host}{key} carries {carried['master']}; {used}: that key says who "
                "opened the forward, not who used it, so it neither corroborates nor contradicts")
    asked = (f"{carried['asked_by']} asked it for this session" if carried.get("asked_by")
             else "which client asked it for this session is not known")
    return (f"the login as {lg['user']}@{later.host}{key} is {carried['master']}; {asked}: that key says who opened "
            "the master, not who asked, so it neither corroborates nor contradicts")


def _unknown_login(chain: list[Step], identity: Identity, notes: list[str]) -> Attribution:
    origin = chain[0]
    lg = origin.login
    method = lg.get("method") or "ssh"
    fp = lg.get("key_fp")
    why = _not_a_person(lg["user"], identity)
    if fp:
        how = f"ssh {method} as {lg['user']} with key {fp}: {why} and the key is not mapped to a person"
    else:
        how = f"ssh {method} as {lg['user']}: {why} and no key was recorded to name who logged in"
    if identity.is_shared(lg["user"]) or fp:
        what = 'a shared account' if identity.is_shared(lg['user']) else 'not a person'
        if fp:
            notes.append(f"{lg['user']} is {what} and key {fp} is not mapped to a person: add it under "
                         "`people` in the config to name who holds it")
        else:       # no key to map: telling someone to map "its key" sends them looking for nothing
            notes.append(f"{lg['user']} is {what} and no key was recorded for the login (a password, or a "
                         "method that names no key), so nothing names who logged in")
    evidence = [f"the chain begins at this login, from {lg.get('raddr') or 'an unknown address'}"]
    evidence.append(f"its key {fp} is not in identity.people" if fp else "no key was recorded for it")
    # a login joined by inference (an audit session across a broken chain) says how it was joined
    evidence += [s.note for s in origin_segment(chain)[1:] if s.inferred and s.note]
    own = Candidate(person=lg["user"], account=lg["user"], host=origin.host, login_time=lg["ts"],
                    source=lg.get("raddr"), key_fp=fp, evidence=evidence, named=False)
    cands = [own]
    for later in chain[1:]:
        if (later.login or {}).get("over_master"):
            continue                # the master's key names who opened it, not who asked: no evidence here
        other = identity.person_for_key((later.login or {}).get("key_fp")) if later.edge in ("login", "ssh") else None
        if other and later.login:
            lat = later.login
            cands.append(Candidate(person=other, account=lat["user"], host=later.host, login_time=lat["ts"],
                                   source=lat.get("raddr"), key_fp=lat.get("key_fp"),
                                   evidence=[f"the key used for the hop to {lat['user']}@{later.host} on this chain "
                                             f"belongs to {other} (a key kept on a shared account is not a person)"]))
    return Attribution(user=PERSON_UNKNOWN, host=origin.host, source=lg.get("raddr"), login_time=lg["ts"],
                       how=how, account=lg["user"], key_fp=fp, notes=notes, confidence=UNKNOWN,
                       candidates=cands)


def _doubted_login(chain: list[Step], identity: Identity) -> Attribution:
    """The origin's login record may not be its process's own (login_doubt): no person is named;
    each record of that process is a candidate, with the doubt as its evidence."""
    origin = chain[0]
    lg = origin.login
    cands = []
    for r in lg.get("records") or [lg]:
        mapped = identity.person_for_key(r.get("key_fp")) or identity.person_for_account(r["user"], origin.host)
        person = mapped or r["user"]
        cands.append(Candidate(person=person, account=r["user"], host=origin.host, login_time=r["ts"],
                               source=r.get("raddr"), key_fp=r.get("key_fp"),
                               named=bool(mapped) or is_person_account(r["user"], identity),
                               evidence=[f"a login record of {_record_of(r, origin)}, from "
                                         f"{r.get('raddr') or 'an unknown address'}", lg["doubt"]]))
    return Attribution(user=PERSON_UNKNOWN, host=origin.host, source=lg.get("raddr"), login_time=lg["ts"],
                       how=f"ssh as {lg['user']}, by a login record whose own evidence disagrees: {lg['doubt']}",
                       account=lg["user"], key_fp=lg.get("key_fp"), notes=[f"{origin.host}: {lg['doubt']}"],
                       confidence=UNKNOWN, candidates=cands)


def _record_of(record: dict[str, Any], origin: Step) -> str:
    if record.get("proc") in (None, origin.proc):
        return f"sshd's process (pid {origin.pid})"
    return f"another sshd process ({record['user']} at {clock(record['ts'])})"


def gaps(chain: list[Step], threshold: float) -> list[dict[str, Any]]:
    """Pauses between consecutive steps at least `threshold` seconds long."""
    out = []
    for i in range(1, len(chain)):
        delta = chain[i].start - chain[i - 1].start
        if delta >= threshold:
            out.append({"after": i - 1, "before": i, "seconds": round(delta, 3),
                        "label": f"paused {format_duration(delta)}"})
    return out


def privilege(chain: list[Step]) -> list[str]:
    """The changes of user along a chain, as the How line, picture and Slack say them:
    ["sudo to root"], ["su to ops"]. A chain that ends at sudo or su names the account it was
    asked for (the kernel still runs it as root, see `link`)."""
    out = []
    for i, step in enumerate(chain):
        if step.edge in ("sudo", "su", "setuid"):
            target = _asked_for(step) if i == len(chain) - 1 else None
            out.append(f"{step.edge} to {target or step.user}")
    return out


def summary(chain: list[Step], who: Attribution) -> str:
    """jim -> jump-box -> config-server (ec2-user), sudo to root"""
    parts = [who.user if who.known else PERSON_UNKNOWN]     # never the account an unknown `user` may hold
    for step in chain:
        if step.edge in ("login", "ssh"):
            acct = step.login["user"] if step.login else step.user
            parts.append(step.host if acct == parts[0] else f"{step.host} ({acct})")
    privileges = privilege(chain)
    if chain and chain[0].edge != "login":
        parts.insert(1, chain[0].host)
    text = " -> ".join(parts)
    return f"{text}, {', '.join(privileges)}" if privileges else text
