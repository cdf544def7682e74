"""Issue 17, rule 4: one process, one match. The execs of one process (a pyenv shim, `env FOO=1
cmd`, a wrapper script that execs the real command) are one match that shows its exec chain, and
`--limit` counts processes, not execs."""

from whodid.tracer import Query, Tracer
from whodid.tracer.render import render_text, traces_json

from kit import T0, Host, ssh_session, store_with

WEB = Host("web-1", "10.0.0.5")


def shim_story():
    """jim's shell runs two processes: a wrapper (pid 210) that execs `env`, which execs the real
    aws; then, later, a pyenv-style shim (pid 220) that execs aws. Every exec names the cluster."""
    ev = ssh_session(WEB, 0, 200, "jim", 1001, "203.0.113.7", 53122)
    ev += [WEB.fork(100, 210, 201),
           WEB.exec(100.01, 210, ["/bin/sh", "/usr/local/bin/aws-wrap", "eks", "delete-cluster", "prod"],
                    uid=1001, auid=1001),
           WEB.exec(100.02, 210, ["env", "AWS_PROFILE=prod", "aws", "eks", "delete-cluster", "prod"],
                    uid=1001, auid=1001),
           WEB.exec(100.03, 210, ["aws", "eks", "delete-cluster", "prod"], uid=1001, auid=1001),
           WEB.exit(101, 210),
           WEB.fork(200, 220, 201),
           WEB.exec(200.01, 220, ["/home/jim/.pyenv/shims/aws", "eks", "delete-cluster", "prod"],
                    uid=1001, auid=1001),
           WEB.exec(200.02, 220, ["/usr/bin/aws", "eks", "delete-cluster", "prod"], uid=1001, auid=1001),
           WEB.exit(201, 220)]
    return store_with(ev)


def test_the_execs_of_one_process_are_one_match_with_its_exec_chain():
    traces = Tracer(shim_story()).find(Query("delete-cluster", limit=10))
    assert [t.poi.pid for t in traces] == [220, 210]                # two processes, newest first
    wrapper = traces[1]
    assert [im.cmd for im in wrapper.execs] == [
        "/bin/sh /usr/local/bin/aws-wrap eks delete-cluster prod",
        "env AWS_PROFILE=prod aws eks delete-cluster prod",
        "aws eks delete-cluster prod"]
    out = render_text(Query("delete-cluster"), traces, T0 + 300)
    assert "Match 2 of 2" in out and "Match 3" not in out
    assert ("exec'd as: /bin/sh /usr/local/bin/aws-wrap eks delete-cluster prod -> "
            "env AWS_PROFILE=prod aws eks delete-cluster prod -> aws eks delete-cluster prod") in out
    doc = traces_json(Query("delete-cluster"), traces, T0 + 300)
    execs = doc["matches"][1]["execs"]
    assert [e["command"] for e in execs] == [im.cmd for im in wrapper.execs]
    assert [e["argv"][0] for e in execs] == ["/bin/sh", "env", "aws"]
    assert [e["poi"] for e in execs] == [False, False, True]        # the match is its newest matching exec
    assert doc["matches"][1]["poi"]["command"] == "aws eks delete-cluster prod"


def test_limit_counts_processes_not_execs():
    (tr,) = Tracer(shim_story()).find(Query("delete-cluster", limit=1))
    assert tr.poi.pid == 220 and len(tr.execs) == 2
    (tr,) = Tracer(shim_story()).find(Query("AWS_PROFILE", limit=1))   # only env's exec matches
    assert tr.poi.pid == 210 and tr.poi.command.startswith("env ")
    assert [im.cmd.split()[0] for im in tr.execs] == ["/bin/sh", "env", "aws"]


def test_a_pin_still_names_the_process_and_its_exec():
    tracer = Tracer(shim_story())
    tr = tracer.find(Query("AWS_PROFILE", limit=1))[0]
    again = tracer.pinned(tr.target)
    assert again.poi.command == tr.poi.command and again.target == tr.target
    assert [im.cmd for im in again.execs] == [im.cmd for im in tr.execs]
