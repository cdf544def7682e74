"""How sure an answer is, and who it could be, in the words every renderer uses.

The text, the picture, the trace page and Slack must say the same thing about confidence
(docs/trace-json.md: observed, inferred, unknown), so the wording lives here, once. The rules:
an unknown person is called "person unknown", never the account the chain ends at (a shared
account or root is where the evidence stopped, not who acted); an inferred answer says what
was inferred; candidates are shown with their evidence, because a candidate without its
reasons reads as an accusation. Recorded data (accounts, hosts, evidence) passes through
unchanged: each renderer escapes it for where it goes.
"""

from __future__ import annotations

from ..stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN, Attribution, Candidate
from ..trace import Trace
from ..when import clock

__all__ = ["OBSERVED", "INFERRED", "UNKNOWN", "PERSON_UNKNOWN", "person", "person_in_a_line", "candidates_count",
           "confidence", "account_said", "reason",
           "inferred_links", "who_can", "candidate_person", "candidate_head", "candidate_short", "earlier_refused"]


def person(who: Attribution) -> str:
    """The person as every renderer names them: "person unknown" when the evidence names nobody,
    whatever the attribution's `user` holds."""
    return who.user if who.known else PERSON_UNKNOWN


def person_in_a_line(tr: Trace) -> str:
    """The person for a one-line view (an alert's suspect, a list of matches, a file's title),
    where no confidence badge stands beside it: "jim (inferred)" when the answer is a guess."""
    name = person(tr.attributed)
    return f"{name} (inferred)" if confidence(tr) == INFERRED else name


def candidates_count(n: int) -> str:
    return f"{n} candidate{'' if n == 1 else 's'}"


def confidence(tr: Trace) -> str:
    """observed, inferred or unknown (anything else reads as unknown: never claim more)."""
    level = tr.attributed.confidence
    return level if level in (OBSERVED, INFERRED, UNKNOWN) else UNKNOWN


def inferred_links(tr: Trace) -> list[str]:
    """What was inferred, from the inferred steps' own notes, in chain order."""
    out = []
    for s in tr.chain:
        if s.inferred:
            note = s.note or f"the link to {s.program or s.command} on {s.host} (pid {s.pid})"
            note = note[len("inferred: "):] if note.startswith("inferred: ") else note
            if note not in out:
                out.append(note)
    return out


def account_said(tr: Trace) -> str:
    """The account an unknown answer stopped at, in words that are true of it: "runs as root"
    when the command runs as it, "logged in as ec2-user" when it is the login's (the command
    may have sudo'ed to root since), else "account deploy" (a login uid's, a service's)."""
    acct = tr.attributed.account
    if not acct:
        return ""
    if acct == tr.poi.user:
        return f"runs as {acct}"
    return f"logged in as {acct}" if tr.attributed.login_time is not None else f"account {acct}"


def reason(tr: Trace) -> str:
    """Why the answer is as sure as it says, in one sentence."""
    level, who = confidence(tr), tr.attributed
    if level == OBSERVED:
        if who.login_time is None:
            return "every link was recorded; the chain has no login"
        return "every link from the login to the command was recorded"
    if level == INFERRED:
        links = inferred_links(tr)
        if links:
            return "a person is named, but inferred from: " + "; ".join(links)
        if who.login_time is None:
            # named by the login uid the processes carry: an account, not a login that was seen
            return ("a person is named by the login uid the processes carry; no login was recorded, "
                    "and root can set a login uid")
        return "a person is named, but some link was inferred (see the notes)"
    said = account_said(tr)
    account = f" ({'it ' if said.startswith('runs') else ''}{said})" if said else ""
    n = len(who.candidates)
    if n:
        return (f"the evidence does not name a person{account}; {n} candidate{'s' if n > 1 else ''} "
                "from evidence about this process")
    return f"the evidence does not name a person{account}, and points at no login"


def who_can(c: Candidate) -> str:
    """jim (ec2-user@web-1), or ec2-user@web-1 when no person is known for the account."""
    at = f"{c.account}@{c.host}"
    return at if c.person in ("", c.account) or not c.named else f"{c.person} ({at})"


def candidate_person(c: Candidate) -> str | None:
    """The candidate's person for JSON: null when the login's account names no one (root, a
    shared account, a bare uid), as `attributed_to.user` is null for an unknown answer."""
    return c.person if c.named and c.person else None


def candidate_head(c: Candidate) -> str:
    """One line per candidate: who, when they logged in, from where, with which key."""
    parts = [who_can(c), f"logged in {clock(c.login_time)}"]
    if c.source:
        parts.append(f"from {c.source}")
    if c.key_fp:
        parts.append(f"key {c.key_fp}")
    return ", ".join(parts)


def candidate_short(c: Candidate, width: int = 90, on: float | None = None) -> str:
    """A candidate in one short line for the picture: who, when, and the first evidence. The
    clock alone when the login was on the day of `on` (the command), else with its date:
    candidates reach back two weeks."""
    at = clock(c.login_time)
    text = f"{who_can(c)} · {at[11:19] if on is None or at[:10] == clock(on)[:10] else at[5:19]}"
    if c.evidence:
        text += f" · {c.evidence[0]}" + (f" (+{len(c.evidence) - 1})" if len(c.evidence) > 1 else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def earlier_refused(tr: Trace) -> str:
    """What "earlier activity" answers when nobody is named: whose activity would it be?"""
    n = len(tr.attributed.candidates)
    tail = (f"; look at its {n} candidate{'s' if n > 1 else ''} and their evidence instead" if n
            else "; nothing points at a login to look at instead")
    return f"No earlier activity to show: the person behind it is unknown{tail}."
