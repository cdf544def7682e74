"""The attribution scenario suite's score (issue 17): real scenarios in the two-host lab, each
answer judged from the `--json` contract as right / honest-unknown / wrong (bench/attribution.py,
which also writes bench/attribution-score.md). The target is 0 wrong.

A scenario that is wrong today is a strict xfail naming what it waits for, so it fails loudly
(XPASS) the day the fix lands and its marker is removed then. The score is computed from the
answers, never written down: `test_the_score_has_no_wrong_answers` prints the table.

The first tests check the judge itself on small answers, so a judge that waves everything
through cannot hide behind the lab.
"""

import json
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import attribution as score  # noqa: E402
from attribution import HONEST, RIGHT, SCENARIOS, WRONG, Scenario, verdict  # noqa: E402

from whodid.agent.lab import missing_tools  # noqa: E402
from test_agent_live import REASON  # noqa: E402

KEYS = {"jim": "SHA256:jimkey", "bob": "SHA256:bobkey"}

# What each scenario that is wrong on this branch waits for (issue 17's helpers' branches).
KNOWN_WRONG: dict[str, str] = {}


def match(user, confidence="observed", candidates=(), summary="jim -> host-a"):
    return {"summary": summary, "confidence": confidence, "candidates": list(candidates),
            "attributed_to": {"user": user if confidence != "unknown" else None}}


def cand(account, key, person=None):
    return {"person": person or account, "account": account, "key_fp": key}


JIM = Scenario("x", "-", "", "jim")
UNKNOWN_JIM = Scenario("x", "3", "", None, frozenset({"jim"}))


@pytest.mark.parametrize("scn, matches, expected", [
    (JIM, [match("jim")], RIGHT),
    (JIM, [match("jim", "inferred")], RIGHT),
    (JIM, [match("ec2-user")], WRONG),                                          # a shared account as the person
    (JIM, [match("root")], WRONG),
    (JIM, [], WRONG),                                                           # dropped
    (JIM, [match("jim"), match("jim")], WRONG),                                 # one process, two matches
    (JIM, [match(None, "unknown", [cand("ec2-user", KEYS["jim"])])], HONEST),
    (JIM, [match(None, "unknown", [cand("ec2-user", KEYS["bob"])])], WRONG),    # jim missing
    (JIM, [match(None, "unknown")], WRONG),
    (Scenario("x", "2", "", "jim", confidence="inferred"), [match("jim")], WRONG),     # overclaimed
    (Scenario("x", "7", "", "jim", says="sudo to {ops}"), [match("jim", summary="jim -> a, sudo to root")], WRONG),
    (UNKNOWN_JIM, [match(None, "unknown", [cand("ec2-user", KEYS["jim"])])], RIGHT),
    (UNKNOWN_JIM, [match(None, "unknown", [cand("ec2-user", "x", person="jim")])], RIGHT),
    (UNKNOWN_JIM, [match("ec2-user")], WRONG),
    (UNKNOWN_JIM, [match("jim")], WRONG),                                       # a guess presented as the person
    (UNKNOWN_JIM, [match(None, "unknown", [])], WRONG),                         # evidence existed
    (UNKNOWN_JIM, [match(None, "unknown", [cand("ec2-user", KEYS["jim"]), cand("ec2-user", KEYS["bob"])])],
     WRONG),                                                                    # bob logged in later
    (Scenario("x", "3", "", None), [match(None, "unknown")], RIGHT),
    (Scenario("x", "3", "", None), [match(None, "observed")], WRONG),           # no person, yet "observed"
])
def test_the_judge(scn, matches, expected):
    assert verdict(scn, matches, KEYS).verdict == expected


def test_every_scenario_is_played_once_and_no_marker_matches_another():
    played = (score.AS_EC2_USER_ON_B + score.AS_JIM_ON_A + score.AS_ROOT_SERVICE_ON_A + score.AS_CRON_JOB_ON_B
              + score.AS_JIM_ON_HOST
              + score.ACROSS_AN_OUTAGE + score.AS_JIM_AND_BOB_IN_A_MULTIPLEXER + score.OVER_A_SHARED_MASTER)
    assert sorted(played) == sorted(s.name for s in SCENARIOS if not s.marker)
    assert {s.marker for s in SCENARIOS if s.marker} <= set(played)
    names = [s.name for s in SCENARIOS]
    assert not [(a, b) for a in names for b in names if a != b and a in b]
    assert set(KNOWN_WRONG) <= set(names)


# --- the lab ----------------------------------------------------------------------------

MISSING = missing_tools()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    if REASON or MISSING:
        pytest.skip(REASON or f"missing {', '.join(MISSING)}")
    work = tmp_path_factory.mktemp("score")
    played = score.play(work)
    answers = score.answers(played, work)
    rows = {s.name: verdict(s, answers[s.name], played.keys, played.ops) for s in SCENARIOS}
    return played, answers, rows, work


def test_the_agents_lost_nothing_and_the_scenarios_happened_as_told(scored):
    played, answers, rows, work = scored
    for where, log in played.logs.items():
        assert "stopped;" in log and "0 records lost" in log, (where, log)
    con = sqlite3.connect(played.dbs["lab"])
    # bob's login as ec2-user began after jim's detached process did, and before its command ran
    (command_ts, forked) = con.execute(
        "SELECT e.ts, pp.fork_ts FROM execs e JOIN procs p ON p.id = e.proc JOIN procs pp ON pp.id = p.parent "
        "WHERE instr(e.cmd, ?)", (score.marker(played.tag, "late-mapped"),)).fetchone()
    (bob_login,) = con.execute("SELECT ts FROM logins WHERE key_fp = ?", (played.keys["bob"],)).fetchone()
    assert forked < bob_login < command_ts
    # the service's chain has no login; the broken chains' stores lack just their parent's fork,
    # and the shell at the break carries the session of a recorded login
    assert not any(c.get("login") for c in answers["service"][0]["chain"])
    for name in ("broken-jim", "broken-shared"):
        parent = "SELECT p.parent FROM procs p JOIN execs e ON e.proc = p.id WHERE instr(e.cmd, ?)"
        (mid,) = con.execute(parent, (score.marker(played.tag, name),)).fetchone()
        cut = sqlite3.connect(work / f"{name}.db")
        assert con.execute("SELECT parent FROM procs WHERE id = ?", (mid,)).fetchone()[0] is not None
        assert cut.execute("SELECT parent FROM procs WHERE id = ?", (mid,)).fetchone()[0] is None
        (ses,) = con.execute("SELECT ses FROM execs WHERE proc = ? AND ses IS NOT NULL", (mid,)).fetchone()
        assert con.execute("SELECT count(*) FROM logins WHERE ses = ?", (ses,)).fetchone()[0] == 1
    # on the host, the outage: two agents, and the waiting shell's command ran under the second
    host = sqlite3.connect(played.dbs["host"])
    assert "stopped;" in played.logs["host (before the outage)"], played.logs
    (ran,) = host.execute("SELECT ts FROM execs WHERE instr(cmd, ?)", (score.marker(played.tag, "outage"),)
                          ).fetchone()
    assert ran > played.restarted_at


def test_the_command_line_gives_the_answer_the_suite_scored(scored, capsys, monkeypatch):
    # the suite reads Tracer + trace_json; `whodid trace --json` (no config: no people) must agree
    from whodid.bot import cli
    played, answers, _, _ = scored
    monkeypatch.delenv("WHODID_CONFIG", raising=False)
    for name in ("hop", "shared-unmapped"):
        pattern = score.marker(played.tag, name if name == "hop" else "shared-mapped")
        assert cli.main(["trace", pattern, "--db", str(played.dbs["lab"]), "--json", "--limit", "10"]) == 0
        got = json.loads(capsys.readouterr().out)["matches"]
        assert [(m["confidence"], m["attributed_to"], m["candidates"], m["summary"]) for m in got] == \
            [(m["confidence"], m["attributed_to"], m["candidates"], m["summary"]) for m in answers[name]]


@pytest.mark.parametrize("name", [
    pytest.param(s.name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_WRONG[s.name]))
    if s.name in KNOWN_WRONG else s.name for s in SCENARIOS])
def test_the_answer_is_not_wrong(scored, name):
    _, answers, rows, _ = scored
    row = rows[name]
    assert row.verdict != WRONG, (row, answers[name][:1])


@pytest.mark.xfail(bool(KNOWN_WRONG), strict=True, reason=f"wrong on this branch: {', '.join(KNOWN_WRONG)}")
def test_the_score_has_no_wrong_answers(scored):
    _, _, rows, work = scored
    table = score.table(list(rows.values()))
    (work / "attribution-score.md").write_text(table)
    print(table)
    assert score.score(list(rows.values()))[WRONG] == 0, table

