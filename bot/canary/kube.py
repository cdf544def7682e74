"""How the Kubernetes canary reaches its cluster: as kubectl would, through the official client.

Three ways to say where and as whom, exactly one per check:
- `api_url` (+ `token` or `token_file`, `ca_file`, `verify_tls`): the API server and a bearer token;
- `kubeconfig` and/or `context`: a kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)
  and one of its contexts (default: its current-context) - tokens, client certificates and exec
  credential plugins (EKS's `aws eks get-token`, GKE's gke-gcloud-auth-plugin) included;
- `in_cluster: true`: the pod's service account (its token and CA under SERVICE_ACCOUNT_DIR, the
  API at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).

The kubeconfig and in-cluster logic is the `kubernetes` library's own (load_kube_config,
InClusterConfigLoader): what it does is what kubectl does, and an exec plugin is run - with its
environment and arguments - as kubectl runs it. Credentials are loaded afresh for every check,
so a plugin's short-lived token is never used past its expiry. Anything that goes wrong while
loading (a missing file, a context that is not there, a plugin that fails) is one line: KubeError.
`server_of` reads which server a kubeconfig context points at, without running any plugin, for
the canary's default suspect connections.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeError(Exception):
    """The credentials or the cluster could not be loaded: one line for people."""


@dataclass
class Answer:
    status: int
    body: bytes
    url: str


def mode(c: dict[str, Any]) -> str:
    """Which of the three ways a check uses: api_url, kubeconfig or in_cluster."""
    if c.get("in_cluster"):
        return "in_cluster"
    if "kubeconfig" in c or "context" in c:
        return "kubeconfig"
    return "api_url"


def kubeconfig_paths(c: dict[str, Any], environ=os.environ) -> list[str]:
    """The files kubectl would read: the check's `kubeconfig`, else $KUBECONFIG (a path list,
    merged first-wins), else ~/.kube/config."""
    if c.get("kubeconfig"):
        return [os.path.expanduser(str(c["kubeconfig"]))]
    if environ.get("KUBECONFIG"):
        return [p for p in environ["KUBECONFIG"].split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


def server_of(c: dict[str, Any], environ=os.environ) -> str:
    """The API server URL a kubeconfig check talks to (its context's cluster's `server`), or the
    in-cluster one. Raises KubeError naming the file, the context or the cluster at fault."""
    if mode(c) == "in_cluster":
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            return "https://kubernetes.default.svc:443"        # what the pod resolves otherwise
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return context_of(c, environ)["server"]


def context_of(c: dict[str, Any], environ=os.environ) -> dict[str, Any]:
    """The check's kubeconfig context, read as kubectl merges files (first wins): {name, server,
    user (the user entry, or {})}. Runs nothing. Raises KubeError naming what is missing."""
    merged: dict[str, Any] = {"contexts": [], "clusters": [], "users": []}
    paths = kubeconfig_paths(c, environ)
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            if len(paths) == 1:
                raise KubeError(f"the kubeconfig {path} does not exist (set `kubeconfig:` to the file kubectl "
                                "uses)") from None
            continue
        except OSError as exc:
            raise KubeError(f"cannot read the kubeconfig {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise KubeError(f"the kubeconfig {path} is not YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(doc, dict):
            raise KubeError(f"the kubeconfig {path} is not a kubeconfig (a mapping with contexts and clusters)")
        merged.setdefault("current-context", doc.get("current-context"))
        if not merged["current-context"]:
            merged["current-context"] = doc.get("current-context")
        for key in ("contexts", "clusters", "users"):
            merged[key] += [e for e in doc.get(key) or [] if isinstance(e, dict)]
    shown = ", ".join(paths)
    name = c.get("context") or merged.get("current-context")
    if not name:
        raise KubeError(f"the kubeconfig {shown} has no current-context: set `context:` on the check")
    context = next((e.get("context") or {} for e in merged["contexts"] if e.get("name") == name), None)
    if context is None:
        known = ", ".join(str(e.get("name")) for e in merged["contexts"]) or "none"
        raise KubeError(f"the kubeconfig {shown} has no context {name!r} (it has: {known})")
    cluster = next((e.get("cluster") or {} for e in merged["clusters"] if e.get("name") == context.get("cluster")),
                   None)
    if not cluster or not cluster.get("server"):
        raise KubeError(f"context {name!r} in {shown} names cluster {context.get('cluster')!r}, which has no server")
    user = next((e.get("user") or {} for e in merged["users"] if e.get("name") == context.get("user")), {})
    return {"name": name, "server": str(cluster["server"]), "user": user if isinstance(user, dict) else {}}


_check = threading.local()          # the processes the current check's thread started


class _PluginProcesses:
    """Stands in for `subprocess` in the library's exec_provider, which waits on a plugin with no
    timeout: each plugin gets its own process group and is listed with the check that started
    it, so a check that times out kills it (checks.run) instead of leaving it - and the thread
    waiting on it - behind at every run."""
    PIPE = subprocess.PIPE

    @staticmethod
    def Popen(*args, **kw):
        kw["start_new_session"] = True
        from whodid.config import environ_for_children
        kw["env"] = environ_for_children(kw.get("env"))       # os.environ and the exec's env, less our secrets
        p = subprocess.Popen(*args, **kw)
        procs = getattr(_check, "procs", None)
        if procs is not None:
            procs.append(p)
        return p


def _own_plugins() -> None:
    from kubernetes.config import exec_provider
    exec_provider.subprocess = _PluginProcesses


def _refuse_writable(paths: list[str]) -> None:
    """A kubeconfig others may write is a command others choose for whodid to run (its exec
    plugin): refused, as ssh refuses a config file others may write."""
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue                          # missing ones: context_of says so
        if mode & 0o022:
            raise KubeError(f"the kubeconfig {path} is writable by group or others (mode {mode:04o}) and its exec "
                            f"plugins run as whodid: run `chmod go-w {path}`")


def _refuse_writable_plugin(ctx: dict[str, Any], paths: list[str]) -> None:
    """The same for the exec plugin's binary, found as the library runs it (a path: from the
    kubeconfig's folder; a bare name: on $PATH)."""
    ex = ctx["user"].get("exec")
    command = ex.get("command") if isinstance(ex, dict) else None
    if not isinstance(command, str) or not command:
        return
    found = os.path.join(os.path.dirname(paths[0]), command) if "/" in command else shutil.which(command)
    try:
        mode = stat.S_IMODE(os.stat(found).st_mode) if found else 0
    except OSError:
        return                                # not there: the library's own error says so
    if mode & 0o022:
        raise KubeError(f"the exec plugin {found} is writable by group or others (mode {mode:04o}) and runs as "
                        f"whodid: run `chmod go-w {found}`")


def configuration(c: dict[str, Any], procs: list | None = None):
    """A kubernetes.client.Configuration for the check, credentials loaded (plugins run) now;
    a plugin's process is added to `procs` (killed if the check times out)."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config import incluster_config, kube_config
    _own_plugins()
    _check.procs = procs

    conf = client.Configuration()
    how = mode(c)
    try:
        if how == "in_cluster":
            sa = SERVICE_ACCOUNT_DIR
            incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(sa, "token"), cert_filename=os.path.join(sa, "ca.crt"),
                environ=os.environ).load_and_set(conf)
        elif how == "kubeconfig":
            paths = kubeconfig_paths(c)
            ctx = context_of(c)              # its own, clearer errors: no file, no such context
            _refuse_writable(paths)
            _refuse_writable_plugin(ctx, paths)
            kube_config.load_kube_config(config_file=os.pathsep.join(paths), context=c.get("context"),
                                         client_configuration=conf, persist_config=False)
            if isinstance(ctx["user"].get("exec"), dict) and not (conf.api_key or conf.cert_file):
                # the library logs a failed plugin and goes on without credentials; kubectl stops
                # and says why. Run it again to say why (it failed once: this costs a failure).
                if any(p.returncode is not None and p.returncode < 0 for p in procs or []):
                    raise KubeError(f"the exec plugin of context {ctx['name']!r} was stopped at the check's timeout")
                from kubernetes.config.exec_provider import ExecProvider
                ExecProvider(kube_config.ConfigNode("exec", ctx["user"]["exec"]),
                             os.path.dirname(paths[0])).run()
                raise KubeError(f"the exec plugin of context {ctx['name']!r} gave no token or client certificate")
        else:
            token = c.get("token") or ""
            if c.get("token_file"):
                try:
                    token = open(c["token_file"]).read().strip()
                except OSError as exc:
                    raise KubeError(f"cannot read the token file {c['token_file']}: {exc.strerror}") from None
            conf.host = c["api_url"].rstrip("/")
            if token:
                conf.api_key = {"BearerToken": f"Bearer {token}"}
            conf.ssl_ca_cert = c.get("ca_file") or None
    except ConfigException as exc:
        raise KubeError(one_line(f"cannot load the {how.replace('_', '-')} credentials: {exc}")) from None
    except (OSError, ValueError, TypeError, KeyError) as exc:      # a plugin that is not there, a bad file
        raise KubeError(one_line(f"cannot load the {how.replace('_', '-')} credentials: "
                                 f"{type(exc).__name__}: {exc}")) from None
    if c.get("verify_tls", True) is False:
        conf.verify_ssl = False
    conf.retries = False                     # one attempt per check: the canary's schedule is the retry
    return conf


def get(c: dict[str, Any], path: str, timeout: float, procs: list | None = None) -> Answer:
    """GET `path` from the check's cluster as the check's identity. Raises KubeError for what
    kept the request from being made; a connection failure or timeout propagates (urllib3)."""
    from kubernetes import client
    conf = configuration(c, procs)
    api = client.ApiClient(conf)
    try:
        method, url, headers, body, post = api.param_serialize("GET", path, header_params={"Accept": "application/json"},
                                                               auth_settings=["BearerToken"])
        resp = api.call_api(method, url, headers, body, post, _request_timeout=timeout)
        return Answer(resp.status, resp.read() or b"", conf.host.rstrip("/") + path)
    finally:
        api.close()


def one_line(text: str) -> str:
    """An exec plugin's stderr or a library message, as one line of at most 300 characters, its
    secrets masked: it becomes the alert (Slack, webhooks, syslog, files), which no log masks."""
    from whodid.logs import mask
    text = mask(" ".join(str(text).split()))
    return text if len(text) <= 300 else text[:299] + "…"
