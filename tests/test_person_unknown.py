"""Issue 17, rule 3: a shared account, root or a bare uid is never the person.

Each answer is observed (a login names the person and every link was seen), inferred (a person
is named, but a link was inferred, or only the processes' audit login uid names the account) or
unknown: then the person is "person unknown", the account is kept, the How says why, and the
candidates are logins that evidence about *this* process points at - its audit session, its
login uid, the logins open when it began - never someone who logged in afterwards. Small
stores built from hand-made events (kit.py); no `identity.people` unless a test says so.
"""

from whodid.tracer import Identity, Person, Query, Tracer
from whodid.tracer.changes import parse_rules, review
from whodid.tracer.render import traces_json
from whodid.tracer.stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN
from whodid.tracer.when import clock

from kit import T0, Host, ssh_session, store_with

H = Host("web-1", "10.0.2.30")
NOBODY = Identity()                               # no identity.people configured
BOB_FP = "SHA256:bobkey"
CRON = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(100, 50, 1), H.exec(100.01, 50, ["/usr/sbin/cron", "-f"])]


def named(ev, name):
    """An exec event whose uids the host names `name` (or, with None, does not name at all)."""
    ev = {**ev, "user": name, "euser": name, "auser": name}
    return {k: v for k, v in ev.items() if v is not None and not (k == "auser" and "auid" not in ev)}


def trace(events, pattern, ident=NOBODY):
    tracer = Tracer(store_with(events), ident)
    (tr,) = tracer.find(Query(pattern=pattern, limit=1))
    return tracer, tr


def cron_job(pid, ts, argv, uid, auid, ses):
    """cron (pid 50, a service: no login uid) starts a job: a shell, then the command."""
    return [H.fork(ts, pid, 50), H.exec(ts + 0.01, pid, ["/bin/sh", "-c", " ".join(argv)], uid=uid, auid=auid, ses=ses),
            H.fork(ts + 0.02, pid + 1, pid), H.exec(ts + 0.03, pid + 1, argv, uid=uid, auid=auid, ses=ses)]


def login_at(ts, sshd_pid, user, uid, ses, key_fp=None, ended=None):
    ev = ssh_session(H, ts, sshd_pid, user, uid, "198.51.100.23", 40000 + sshd_pid, key_fp, ses=ses)
    return ev + ([H.exit(ended, sshd_pid)] if ended is not None else [])


# --- observed and inferred ------------------------------------------------------------------

def test_a_login_to_a_personal_account_is_observed_without_any_people_configured():
    ev = ssh_session(H, 0, 200, "jim", 1001, "203.0.113.7", 53122)
    ev += [H.fork(60, 210, 201), H.exec(60.01, 210, ["rm", "-rf", "/srv/data"], uid=1001, auid=1001, ses=200)]
    _, tr = trace(ev, "rm -rf")
    who = tr.attributed
    assert (who.user, who.confidence, who.candidates) == ("jim", OBSERVED, [])


def test_a_session_fallback_names_the_person_as_inferred():
    from test_session_fallback import broken_chain
    _, tr = trace(broken_chain(), "rm -rf", Identity(people=(Person("jim", ssh_keys=("SHA256:jim",)),)))
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", INFERRED)


def test_a_cron_job_with_no_login_is_its_owner_by_login_uid_inferred():
    _, tr = trace(CRON + cron_job(60, 3600, ["tar", "czf", "/tmp/home.tgz", "/home/jim"], 1001, 1001, 40), "tar czf")
    who = tr.attributed
    assert (who.user, who.account, who.confidence, who.login_time) == ("jim", "jim", INFERRED, None)
    assert who.how == "no login recorded: the processes carry jim's login uid (1001), scheduled by cron on web-1"


def test_a_service_of_its_own_account_names_the_account_as_inferred():
    # a pipeline's runner: the account is the actor (change review's expected actors match it)
    ev = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(10, 70, 1),
          named(H.exec(10.01, 70, ["/usr/bin/gitlab-runner", "run"], uid=995), "gitlab-runner"),
          H.fork(900, 71, 70), named(H.exec(900.01, 71, ["systemctl", "restart", "app"], uid=995), "gitlab-runner")]
    _, tr = trace(ev, "systemctl restart")
    assert (tr.attributed.user, tr.attributed.confidence) == ("gitlab-runner", INFERRED)
    assert tr.attributed.how.endswith("(pid 70) on web-1, as gitlab-runner, with no login uid: the account is the actor")


# --- unknown --------------------------------------------------------------------------------

def test_a_root_service_is_person_unknown_with_no_candidates():
    # jim is logged in while the service deletes the data: being logged in is no evidence
    ev = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(50, 70, 1), H.exec(50.01, 70, ["/usr/sbin/backupd"])]
    ev += login_at(3000, 200, "jim", 1001, 7)
    ev += [H.fork(4000, 71, 70), H.exec(4000.01, 71, ["rm", "-rf", "/srv/data"])]
    tracer, tr = trace(ev, "rm -rf")
    who = tr.attributed
    assert (who.user, who.account, who.confidence, who.candidates) == (PERSON_UNKNOWN, "root", UNKNOWN, [])
    assert who.how == ("no login: the chain starts at the service `/usr/sbin/backupd` (pid 70) on web-1, as root; "
                       "root is not a person, and no process on the chain carries a login uid (a service, not "
                       "anyone's session), so no evidence names a person")
    assert not who.known and tr.summary.startswith(PERSON_UNKNOWN)
    # and nothing is shown as this unknown person's: no earlier work, no search by the words
    assert tracer.earlier(tr) == []
    assert tracer.find(Query(pattern="rm -rf", user=PERSON_UNKNOWN)) == []
    assert [t.attributed.account for t in tracer.find(Query(pattern="rm -rf", user="root"))] == ["root"]


def root_cron_story():
    """root's cron job (login uid 0, audit session 41, no login of that session) restarts nginx
    at 5000. Around it: a root login open then (the candidate), one that had ended, one that
    began after the job, and jim's login, open then but of another account."""
    ev = list(CRON)
    ev += login_at(1000, 300, "root", 0, 9, ended=2000)            # over before the job began
    ev += login_at(4000, 310, "root", 0, 10)                       # open when it began
    ev += login_at(4500, 320, "jim", 1001, 11)                     # open, but jim's account
    ev += cron_job(80, 5000, ["systemctl", "restart", "nginx"], 0, 0, 41)
    ev += login_at(5500, 330, "root", 0, 12)                       # logged in after the job began
    return ev


def test_roots_cron_job_is_unknown_and_names_the_root_login_open_then():
    _, tr = trace(root_cron_story(), "systemctl restart nginx")
    who = tr.attributed
    assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, "root", UNKNOWN)
    assert who.how == ("no login recorded: the processes carry root's login uid (0), scheduled by cron on web-1; "
                       "root is not a person, so no person is named")
    (cand,) = who.candidates
    assert (cand.person, cand.account, cand.host, cand.login_time) == ("root", "root", "web-1", T0 + 4000.2)
    assert cand.evidence == [f"open on web-1 when pid 80 began ({clock(T0 + 5000)})",
                             "loginuid 0 is this login's account (root)"]


def test_someone_who_logged_in_after_the_process_started_is_not_a_candidate():
    # the only root login is after the job began: even an exact account match is no candidate
    ev = list(CRON) + cron_job(80, 5000, ["systemctl", "restart", "nginx"], 0, 0, 41)
    ev += login_at(5000.5, 330, "root", 0, 12)
    ev += login_at(6000, 340, "root", 0, 41)            # even one that claims the job's session id
    _, tr = trace(ev, "systemctl restart nginx")
    assert (tr.attributed.user, tr.attributed.candidates) == (PERSON_UNKNOWN, [])
    assert not any(s.login for s in tr.chain)
    assert any("there is no candidate" in n for n in tr.notes)


def test_a_login_open_for_weeks_before_is_no_candidate_on_time_alone():
    from whodid.tracer.trace import OPEN_LOGIN_HORIZON
    ev = list(CRON) + login_at(5000 - OPEN_LOGIN_HORIZON - 60, 300, "root", 0, 9)
    ev += cron_job(80, 5000, ["systemctl", "restart", "nginx"], 0, 0, 41)
    _, tr = trace(ev, "systemctl restart nginx")
    assert (tr.attributed.confidence, tr.attributed.candidates) == (UNKNOWN, [])


def test_a_shared_account_by_login_uid_lists_the_open_logins_of_that_account():
    # no parent recorded (the agent started late), login uid 1000 (ec2-user, shared), a session
    # with no login record; bob's key is known, so his candidate login names him - still not the answer
    ident = Identity(people=(Person("bob", ssh_keys=(BOB_FP,)),))
    ev = login_at(100, 200, "ec2-user", 1000, 5, key_fp="SHA256:stranger")
    ev += login_at(200, 210, "ec2-user", 1000, 6, key_fp=BOB_FP)
    ev += [H.exec(300, 600, ["bash"], uid=1000, auid=1000, ses=42, snapshot=True),
           H.fork(400, 610, 600), H.exec(400.01, 610, ["rm", "-rf", "/srv/data"], uid=1000, auid=1000, ses=42)]
    ev += login_at(350, 220, "jim", 1001, 7)               # after bash began: never a candidate
    _, tr = trace(ev, "rm -rf", ident)
    who = tr.attributed
    assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, "ec2-user", UNKNOWN)
    assert "ec2-user is a shared account" in who.how
    # the same evidence for both: the latest login first
    assert [(c.person, c.account, c.key_fp) for c in who.candidates] == [("bob", "ec2-user", BOB_FP),
                                                                      ("ec2-user", "ec2-user", "SHA256:stranger")]
    assert all(c.evidence[0].startswith("open on web-1 when pid 600 began") for c in who.candidates)


def test_the_audit_session_of_a_process_deeper_in_the_chain_is_the_strongest_evidence():
    # the top of the chain carries session 42 (no login); a process below it carries session 9,
    # whose login began before it: that login outranks a root login merely open at the time
    ev = list(CRON) + login_at(100, 300, "root", 0, 9) + login_at(3000, 310, "root", 0, 10)
    ev += [H.fork(5000, 80, 50), H.exec(5000.01, 80, ["/bin/sh", "-c", "x"], auid=0, ses=42),
           H.fork(5000.02, 81, 80), H.exec(5000.03, 81, ["systemctl", "stop", "db"], auid=0, ses=9)]
    _, tr = trace(ev, "systemctl stop")
    who = tr.attributed
    assert who.confidence == UNKNOWN
    assert [c.login_time for c in who.candidates] == [T0 + 100.2, T0 + 3000.2]
    assert who.candidates[0].evidence[0] == "same audit session 9 as pid 81"
    assert "same audit session 9 as pid 81" not in who.candidates[1].evidence


def test_candidates_are_capped_and_the_rest_said():
    ev = list(CRON)
    for i in range(7):
        ev += login_at(1000 + i * 10, 300 + i * 10, "root", 0, 9 + i)
    ev += cron_job(80, 5000, ["systemctl", "restart", "nginx"], 0, 0, 41)
    _, tr = trace(ev, "systemctl restart nginx")
    who = tr.attributed
    assert [c.login_time for c in who.candidates] == [T0 + 1000.2 + i * 10 for i in (6, 5, 4, 3, 2)]
    assert "2 more candidate logins left out: the 5 with the strongest evidence are listed" in who.notes


def test_an_ssh_login_to_a_shared_account_with_an_unknown_key_is_its_own_candidate():
    ev = ssh_session(H, 0, 200, "ec2-user", 1000, "203.0.113.7", 53122, "SHA256:stranger")
    ev += login_at(10, 300, "ec2-user", 1000, 9)                   # open too, but not this chain's
    ev += [H.fork(60, 210, 201), H.exec(60.01, 210, ["rm", "-rf", "/srv/data"], uid=1000, auid=1000, ses=200)]
    _, tr = trace(ev, "rm -rf")
    who = tr.attributed
    assert (who.user, who.account, who.confidence, who.key_fp) == (PERSON_UNKNOWN, "ec2-user", UNKNOWN,
                                                                    "SHA256:stranger")
    assert who.how == ("ssh publickey as ec2-user with key SHA256:stranger: ec2-user is a shared account and the "
                       "key is not mapped to a person")
    (cand,) = who.candidates
    assert (cand.account, cand.source, cand.key_fp) == ("ec2-user", "203.0.113.7", "SHA256:stranger")
    assert cand.evidence == ["the chain begins at this login, from 203.0.113.7",
                             "its key SHA256:stranger is not in identity.people"]


def test_a_shared_login_joined_by_its_audit_session_is_unknown_and_says_how_it_was_joined():
    from test_session_fallback import broken_chain
    ev = [e for e in broken_chain(auid=1000) if e["kind"] != "login"]      # make carries ec2-user's login uid
    ev.append(H.login(0.2, 200, "ec2-user", "203.0.113.7", 53122, key_fp="SHA256:stranger", ses=7))
    _, tr = trace(ev, "rm -rf")
    who = tr.attributed
    assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, "ec2-user", UNKNOWN)
    (cand,) = who.candidates
    assert cand.evidence[-1] == ("inferred: the parent chain breaks at pid 600 (its parent was not recorded); "
                                 "joined to ec2-user's login by audit session 7 (of pid 610)")


def test_a_bare_uid_is_not_a_person():
    ev = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(50, 70, 1),
          H.exec(50.01, 70, ["/bin/sh", "-c", "x"], uid=4242, auid=4242, ses=50),
          H.fork(60, 71, 70), H.exec(60.01, 71, ["rm", "-rf", "/srv/data"], uid=4242, auid=4242, ses=50)]
    # a uid with no passwd entry: the host reports no name for it
    ev = [named(e, None) if e["kind"] == "exec" and e["pid"] in (70, 71) else e for e in ev]
    _, tr = trace(ev, "rm -rf")
    assert (tr.attributed.user, tr.attributed.account) == (PERSON_UNKNOWN, "uid 4242")
    assert "uid 4242 has no name on the host" in tr.attributed.how


# --- what the answer says, and who else reads it --------------------------------------------

def test_the_json_answer_names_no_one_and_lists_the_candidates():
    _, tr = trace(root_cron_story(), "systemctl restart nginx")
    (m,) = traces_json(Query(pattern="systemctl restart nginx"), [tr], T0 + 9000)["matches"]
    assert (m["attributed_to"]["user"], m["attributed_to"]["account"], m["confidence"]) == (None, "root", "unknown")
    (c,) = m["candidates"]
    assert (c["person"], c["account"], c["host"]) == (None, "root", "web-1")     # root is never a person
    assert "loginuid 0 is this login's account (root)" in c["evidence"]


def test_change_review_never_matches_an_unknown_person_by_the_words():
    ev = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(50, 70, 1), H.exec(50.01, 70, ["/usr/sbin/agentd"]),
          H.fork(4000, 71, 70), H.exec(4000.01, 71, ["systemctl", "restart", "nginx"])]
    # and someone on the shared ec2-user with a key nobody mapped
    ev += ssh_session(H, 5000, 200, "ec2-user", 1000, "203.0.113.7", 53122, "SHA256:stranger")
    ev += [H.fork(5060, 210, 201), H.exec(5060.01, 210, ["apt-get", "install", "-y", "nmap"], uid=1000, auid=1000,
                                         ses=200)]
    rules = parse_rules({"expected_actors": [{"name": "ghost", "users": ["person unknown"]}]})
    tracer = Tracer(store_with(ev), NOBODY)
    service, by_hand = review(tracer, rules, T0, T0 + 9000).changes
    assert (service.person, service.account, service.by_login) == (PERSON_UNKNOWN, "root", False)
    assert service.verdict.actor is None and not service.verdict.planned
    assert service.verdict.detail.startswith("an unknown person (account root)")
    assert (by_hand.person, by_hand.account, by_hand.by_login) == (PERSON_UNKNOWN, "ec2-user", True)
    assert (by_hand.verdict.actor, by_hand.verdict.reason) == (None, "human, not a pipeline")
    assert by_hand.verdict.detail.startswith("someone logged in as ec2-user (person unknown) and did it by hand")
    assert review(tracer, rules, T0, T0 + 9000, user=PERSON_UNKNOWN).changes == []
    assert [c.subject for c in review(tracer, rules, T0, T0 + 9000, user="root").changes] == ["systemctl restart nginx"]


def test_the_cli_shows_no_earlier_activity_of_an_unknown_person(tmp_path, capsys, monkeypatch):
    from whodid.bot import cli
    monkeypatch.delenv("WHODID_CONFIG", raising=False)
    ev = [H.exec(0, 1, ["/sbin/init"], snapshot=True), H.fork(50, 70, 1), H.exec(50.01, 70, ["/usr/sbin/backupd"]),
          H.fork(3000, 71, 70), H.exec(3000.01, 71, ["ls", "/srv"]), H.fork(4000, 72, 70),
          H.exec(4000.01, 72, ["rm", "-rf", "/srv/data"])]
    store_with(ev, str(tmp_path / "w.db")).close()
    assert cli.main(["trace", "rm -rf", "--db", str(tmp_path / "w.db"), "--since", "2023-11-01", "--earlier"]) == 0
    out = capsys.readouterr().out
    assert "Match 1: No earlier activity to show: the person behind it is unknown" in out
    assert "Earlier activity of person unknown" not in out
