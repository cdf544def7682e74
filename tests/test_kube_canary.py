"""The Kubernetes canary authenticates as kubectl would: a kubeconfig's contexts, an exec
credential plugin (a script printing an ExecCredential, as `aws eks get-token` does), and the
pod's service account - each against the local fake API server; what fails is one line."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import yaml

from whodid.bot.canary.checks import CanaryError, parse_canary, run
from whodid.bot.canary import kube
from whodid.bot.demo.fakekube import FakeKube

CLUSTER = "/apis/eks.amazonaws.com/v1/clusters/prod"


def canary(check, **kw):
    raw = {"name": "k", "every": "1m", "timeout": "5s", "check": {"type": "kubernetes", "path": CLUSTER, **check}}
    raw.update(kw)
    return parse_canary(raw, "test")


def kubeconfig(tmp_path, fake, user_prod, current="prod", name="config"):
    """Two contexts: `prod` at the fake API as `user_prod`, `wrong` at a port nothing listens on."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "prod", "cluster": {"server": fake.url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "canary"}},
                     {"name": "wrong", "context": {"cluster": "nowhere", "user": "canary"}}],
        "users": [{"name": "canary", "user": user_prod}],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def plugin(tmp_path, body: str, name="get-token"):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def fake():
    with FakeKube(token="tok-123") as f:
        f.add(CLUSTER, "Cluster", "prod")
        yield f


def test_a_kubeconfig_context_with_a_token(tmp_path, fake):
    path = kubeconfig(tmp_path, fake, {"token": "tok-123"})
    r = run(canary({"kubeconfig": path}))                      # the current context
    assert r.ok and r.summary == "Cluster prod exists", r.summary
    r = run(canary({"kubeconfig": path, "context": "prod"}))
    assert r.ok, r.summary
    fake.delete(CLUSTER)
    r = run(canary({"kubeconfig": path, "context": "prod"}))
    assert not r.ok and r.summary.startswith(f"cluster prod is gone: 404 from {fake.url}{CLUSTER}")
    r = run(canary({"kubeconfig": path, "context": "wrong"}))
    assert not r.ok and r.summary.startswith("cannot reach the Kubernetes API at http://127.0.0.1:9"), r.summary
    assert "\n" not in r.summary


def test_a_context_that_is_not_there_is_one_line_at_load_and_at_run(tmp_path, fake):
    path = kubeconfig(tmp_path, fake, {"token": "tok-123"})
    with pytest.raises(CanaryError) as exc:
        canary({"kubeconfig": path, "context": "staging"})
    assert str(exc.value) == f"the kubeconfig {path} has no context 'staging' (it has: prod, wrong)"
    # a context removed after the config loaded: the run says the same
    c = canary({"kubeconfig": path, "context": "wrong"})
    kubeconfig(tmp_path, fake, {"token": "tok-123"})
    doc = yaml.safe_load(open(path))
    doc["contexts"] = doc["contexts"][:1]
    open(path, "w").write(yaml.safe_dump(doc))
    r = run(c)
    assert not r.ok and r.summary == f"the kubeconfig {path} has no context 'wrong' (it has: prod)"


def test_a_missing_kubeconfig_is_said(tmp_path):
    with pytest.raises(CanaryError, match=r"the kubeconfig .*/nope does not exist"):
        canary({"kubeconfig": str(tmp_path / "nope")})


def test_the_kubeconfig_from_the_environment(tmp_path, fake, monkeypatch):
    path = kubeconfig(tmp_path, fake, {"token": "tok-123"})
    monkeypatch.setenv("KUBECONFIG", path)
    c = canary({"context": "prod"})
    assert c.suspects.connections == (f"127.0.0.1:{fake.httpd.server_address[1]}",)
    assert run(c).ok


def test_suspect_connections_default_to_the_contexts_server(tmp_path, fake):
    path = kubeconfig(tmp_path, fake, {"token": "tok-123"})
    port = fake.httpd.server_address[1]
    assert canary({"kubeconfig": path}).suspects.connections == (f"127.0.0.1:{port}",)
    assert canary({"kubeconfig": path, "context": "wrong"}).suspects.connections == ("127.0.0.1:9",)


def test_an_exec_credential_plugin(tmp_path, fake):
    calls = tmp_path / "calls"
    script = plugin(tmp_path, f"""
        import json, os, sys
        open({str(calls)!r}, "a").write(" ".join(sys.argv[1:]) + " " + os.environ.get("AWS_PROFILE", "") + "\\n")
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": "tok-123"}}}}))
        """)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script,
                     "args": ["eks", "get-token", "--cluster-name", "prod"],
                     "env": [{"name": "AWS_PROFILE", "value": "ops"}]}}
    c = canary({"kubeconfig": kubeconfig(tmp_path, fake, user)})
    r = run(c)
    assert r.ok and r.summary == "Cluster prod exists", r.summary
    assert calls.read_text() == "eks get-token --cluster-name prod ops\n"      # run as kubectl runs it
    run(c)
    assert len(calls.read_text().splitlines()) == 2          # credentials are loaded afresh each check


def test_an_exec_plugin_that_fails_is_one_line(tmp_path, fake):
    script = plugin(tmp_path, """
        import sys
        print("An error occurred (ExpiredToken) when calling the GetCallerIdentity operation:", file=sys.stderr)
        print("  the security token included in the request is expired", file=sys.stderr)
        sys.exit(255)
        """)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script}}
    r = run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)}))
    assert not r.ok and "\n" not in r.summary
    assert r.summary.startswith("cannot load the kubeconfig credentials: exec: process returned 255"), r.summary
    assert "ExpiredToken" in r.summary and "expired" in r.summary
    # a plugin that is not installed at all
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(tmp_path / "no-such")}}
    r = run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user, name="c2")}))
    assert not r.ok and r.summary.startswith("cannot load the kubeconfig credentials:") and "no-such" in r.summary


def test_an_exec_plugin_that_hangs_is_killed_at_the_timeout(tmp_path, fake):
    """The library waits on a plugin with no timeout: the check's own timeout must stop it, not
    leave a process (and the thread waiting on it) behind at every run."""
    pidfile = tmp_path / "pid"
    script = plugin(tmp_path, f"""
        import os, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
        """)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script}}
    r = run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)}, timeout="1s"))
    assert r.timed_out and r.summary.startswith("timed out after 1s")
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_kubeconfig_others_may_write_is_refused(tmp_path, fake):
    """Its exec plugin is a command: whoever may write the file chooses what whodid runs."""
    path = kubeconfig(tmp_path, fake, {"token": "tok-123"})
    os.chmod(path, 0o666)
    r = run(canary({"kubeconfig": path}))
    assert not r.ok and r.summary == (f"the kubeconfig {path} is writable by group or others (mode 0666) and its "
                                      f"exec plugins run as whodid: run `chmod go-w {path}`")
    os.chmod(path, 0o644)
    assert run(canary({"kubeconfig": path})).ok


def _cert(tmp_path):
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=kubernetes", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc"], check=True, capture_output=True)
    return str(crt), str(key)


def test_in_cluster_service_account(tmp_path, monkeypatch):
    """The library reads the token and CA from the paths it is given: a temp dir stands in for
    /var/run/secrets/kubernetes.io/serviceaccount, the env vars for the pod's."""
    crt, key = _cert(tmp_path)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("tok-123")          # as the kubelet writes it: no newline
    (sa / "ca.crt").write_text(open(crt).read())
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", str(sa))
    with FakeKube(token="tok-123", tls=(crt, key)) as fake:
        fake.add(CLUSTER, "Cluster", "prod")
        port = fake.httpd.server_address[1]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
        c = canary({"in_cluster": True})
        assert c.suspects.connections == (f"127.0.0.1:{port}",)
        r = run(c)
        assert r.ok and r.summary == "Cluster prod exists", r.summary
        fake.delete(CLUSTER)
        assert run(c).summary.startswith(f"cluster prod is gone: 404 from https://127.0.0.1:{port}")
        (sa / "token").write_text("rotated-elsewhere")           # read afresh: a rotated token is used
        assert "refused the canary's credentials (401)" in run(c).summary
        (sa / "token").unlink()
        r = run(c)
        assert not r.ok and r.summary == "cannot load the in-cluster credentials: Service token file does not exist."
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
        r = run(c)
        assert r.summary == "cannot load the in-cluster credentials: Service host/port is not set."


@pytest.mark.parametrize("check, words", [
    ({}, "exactly one of `api_url` (+ `token_file`), `kubeconfig`/`context`, or `in_cluster: true`"),
    ({"api_url": "http://x", "in_cluster": True}, "got api_url and in_cluster"),
    ({"in_cluster": True, "token": "t"}, "`token`/`token_file`/`ca_file` go with `api_url`"),
    ({"context": "prod", "ca_file": "/ca.pem"}, "`token`/`token_file`/`ca_file` go with `api_url`"),
    ({"in_cluster": "yes"}, "in_cluster is true or false"),
])
def test_bad_kubernetes_checks_are_explained(check, words):
    with pytest.raises(CanaryError) as exc:
        canary(check)
    assert words in str(exc.value)


def test_an_exec_plugins_stderr_cannot_put_a_token_in_the_alert(tmp_path, fake):
    """The plugin's stderr becomes the alert (Slack, webhook, syslog, files): tokens it prints
    are masked there as in the log (adversarial review, issue 22)."""
    script = plugin(tmp_path, """
        import sys
        print("refresh failed for k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8_QWN0aW9uPUdldENhbGxlcklkZW50aXR5", file=sys.stderr)
        print("Authorization: Bearer ya29.a0AfH6SMBxSECRETSECRET", file=sys.stderr)
        sys.exit(1)
        """)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script}}
    r = run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)}))
    assert not r.ok and "exec: process returned 1" in r.summary
    assert "aHR0cHM6Ly9zdHMu" not in r.summary and "SECRETSECRET" not in r.summary, r.summary


def test_whodids_own_secrets_stay_out_of_plugins_and_command_checks(tmp_path, fake, monkeypatch):
    """serve holds Slack's tokens in its environment (the unit's EnvironmentFile, the pod's
    secretKeyRef): an exec plugin (a vendor's binary) and a command check (whose output becomes
    the alert's detail) get the rest of it, not those (adversarial review, issue 22)."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-should-not-leak-0000")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-should-not-leak")
    monkeypatch.setenv("AWS_PROFILE", "ops")
    seen = tmp_path / "env"
    script = plugin(tmp_path, f"""
        import json, os
        open({str(seen)!r}, "w").write(json.dumps(dict(os.environ)))
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": "tok-123"}}}}))
        """)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script}}
    assert run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)})).ok
    env = json.loads(seen.read_text())
    assert env["AWS_PROFILE"] == "ops" and "SLACK_BOT_TOKEN" not in env and "SLACK_SIGNING_SECRET" not in env
    r = run(parse_canary({"name": "c", "every": "1m", "check": {"type": "command", "argv": [
        "sh", "-c", "echo bot=$SLACK_BOT_TOKEN signing=$SLACK_SIGNING_SECRET aws=$AWS_PROFILE; exit 1"]}}, "test"))
    assert not r.ok and "aws=ops" in r.detail and "not-leak" not in r.detail, r.detail


def test_an_exec_plugin_others_may_write_is_refused_and_not_run(tmp_path, fake):
    """The same rule one step on: a kubeconfig only root may write still names a plugin binary,
    and whoever may write that binary chooses what whodid runs (adversarial review, issue 22)."""
    ran = tmp_path / "ran"
    script = plugin(tmp_path, f"""
        import json
        open({str(ran)!r}, "w").write("ran")
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": "tok-123"}}}}))
        """)
    os.chmod(script, 0o777)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": script}}
    r = run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)}))
    assert not r.ok and not ran.exists(), r.summary
    assert r.summary == (f"the exec plugin {script} is writable by group or others (mode 0777) and runs as whodid: "
                         f"run `chmod go-w {script}`")
    os.chmod(script, 0o755)
    assert run(canary({"kubeconfig": kubeconfig(tmp_path, fake, user)})).ok and ran.exists()
