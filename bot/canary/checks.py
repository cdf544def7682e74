"""Canaries: what each one checks, parsed from the config, and the checks themselves.

A check returns a Result - never raises - and is bounded by the canary's timeout: sockets
and HTTP time out, a command is killed (its whole process group), and `run` itself gives up
on anything still running at the deadline and reports "timed out".
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from whodid.config import environ_for_children
from whodid.logs import mask
from whodid.tracer.destinations import DestinationError, endpoint, parse_destination
from whodid.tracer.when import TimeError, parse_duration

from . import kube

TYPES = ("http", "tcp", "command", "kubernetes")
BODY_KEPT = 300


class CanaryError(ValueError):
    pass


@dataclass(frozen=True)
class Suspects:
    commands: tuple[str, ...] = ()       # patterns, as /whodid takes them; empty: the change review's patterns
    hosts: tuple[str, ...] = ()          # globs; empty: every host
    lookback: float = 86400.0
    connections: tuple[str, ...] = ()    # destinations, as to: takes them; empty: what the check itself reaches


@dataclass(frozen=True)
class Canary:
    name: str
    check: dict[str, Any]
    every: float | None = None           # seconds, or
    cron: str | None = None              # a crontab line (minute hour day month weekday)
    timeout: float = 10.0
    channel: str = ""
    outputs: tuple[str, ...] = ()        # named top-level outputs (webhook, syslog) it also alerts
    failures_before_alert: int = 1
    suspects: Suspects = field(default_factory=Suspects)

    @property
    def kind(self) -> str:
        return self.check["type"]

    def schedule(self) -> str:
        return f"every {self.every:g}s" if self.every else f"cron {self.cron}"


@dataclass
class Result:
    ok: bool
    summary: str                         # one line: "HTTP 404 from https://... (expected 200)"
    detail: str = ""
    seconds: float = 0.0
    timed_out: bool = False


# --- parsing ---------------------------------------------------------------------------------

CANARY_KEYS = {"name", "every", "cron", "timeout", "channel", "outputs", "failures_before_alert", "check", "suspects"}
CHECK_KEYS = {
    "http": {"type", "url", "method", "headers", "expect_status", "body_regex", "json_path", "json_equals",
             "verify_tls", "ca_file"},
    "tcp": {"type", "host", "port"},
    "command": {"type", "argv", "shell", "expect_exit", "output_regex"},
    "kubernetes": {"type", "api_url", "path", "token", "token_file", "ca_file", "verify_tls", "kubeconfig", "context",
                   "in_cluster"},
}
SUSPECT_KEYS = {"commands", "hosts", "lookback", "connections"}


def parse_canaries(raw: Any) -> list[Canary]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CanaryError("`canaries` is a list of canaries (`whodid config example` shows one)")
    out, names = [], set()
    for i, item in enumerate(raw):
        c = parse_canary(item, f"canaries[{i}]")
        if c.name in names:
            raise CanaryError(f"two canaries are named {c.name!r}")
        names.add(c.name)
        out.append(c)
    return out


def parse_canary(raw: Any, where: str) -> Canary:
    if not isinstance(raw, dict):
        raise CanaryError(f"{where} must be a mapping")
    _known(raw, CANARY_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise CanaryError(f"{where}.name must be a short name (letters, digits, - _ .), got {name!r}")
    where = f"canary {name}"
    if ("every" in raw) == ("cron" in raw):
        raise CanaryError(f"{where}: say how often with exactly one of `every: 1m` or `cron: \"*/5 * * * *\"`")
    every = _duration(raw, "every", where) if "every" in raw else None
    cron = raw.get("cron")
    if cron is not None:
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise CanaryError(f"{where}.cron is five fields (minute hour day month weekday), got {cron!r}")
        try:
            from apscheduler.triggers.cron import CronTrigger
            CronTrigger.from_crontab(cron, timezone="UTC")
        except ValueError as exc:
            raise CanaryError(f"{where}.cron {cron!r}: {exc}") from None
    timeout = _duration(raw, "timeout", where) if "timeout" in raw else 10.0
    if every is not None and every < 1:
        raise CanaryError(f"{where}.every must be at least 1s")
    n = raw.get("failures_before_alert", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CanaryError(f"{where}.failures_before_alert must be a whole number, at least 1")
    channel = raw.get("channel", "")
    if not isinstance(channel, str):
        raise CanaryError(f"{where}.channel must be a channel name or id")
    outputs = raw.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs):
        raise CanaryError(f"{where}.outputs is a list of output names (the top-level `outputs`)")
    check = raw.get("check")
    if not isinstance(check, dict) or check.get("type") not in TYPES:
        raise CanaryError(f"{where}.check needs a type: one of {', '.join(TYPES)}")
    _known(check, CHECK_KEYS[check["type"]], f"{where}.check")
    _check_fields(check, f"{where}.check")
    s = raw.get("suspects") or {}
    if not isinstance(s, dict):
        raise CanaryError(f"{where}.suspects must be a mapping")
    _known(s, SUSPECT_KEYS, f"{where}.suspects")
    for key in ("commands", "hosts", "connections"):
        if not isinstance(s.get(key, []), list) or not all(isinstance(v, str) and v for v in s.get(key, [])):
            raise CanaryError(f"{where}.suspects.{key} must be a list of strings")
    connections = tuple(s["connections"]) if "connections" in s else own_destinations(check)
    for spec in connections:
        try:
            parse_destination(spec)
        except DestinationError as exc:
            raise CanaryError(f"{where}.suspects.connections: {exc}") from None
    suspects = Suspects(commands=tuple(s.get("commands", [])), hosts=tuple(s.get("hosts", [])),
                        lookback=_duration(s, "lookback", f"{where}.suspects") if "lookback" in s else 86400.0,
                        connections=connections)
    return Canary(name=name, check=dict(check), every=every, cron=cron, timeout=timeout, channel=channel,
                  outputs=tuple(outputs), failures_before_alert=n, suspects=suspects)


def own_destinations(check: dict[str, Any]) -> tuple[str, ...]:
    """What a check itself connects to, as `to:` takes it: when the API a canary watches breaks,
    whoever talked to that API just before is a suspect even if no command line names the
    action (a script, an SDK, a `curl -X DELETE` whose URL sat in a file). A command check
    reaches nothing whodid can name."""
    t = check["type"]
    if t == "tcp":
        return (endpoint(str(check["host"]), check["port"]),)
    if t in ("http", "kubernetes"):
        if t == "kubernetes" and kube.mode(check) != "api_url":
            try:
                url = urlsplit(kube.server_of(check))     # the kubeconfig context's server, or in-cluster's
            except kube.KubeError as exc:
                raise CanaryError(str(exc)) from None
        else:
            url = urlsplit(check["url"] if t == "http" else check["api_url"])
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            return ()
        host = url.hostname or ""
        if not host:
            return ()
        return (endpoint(host, port),)
    return ()


def _check_fields(c: dict[str, Any], where: str) -> None:
    t = c["type"]
    need = {"http": ["url"], "tcp": ["host", "port"], "command": ["argv"], "kubernetes": ["path"]}[t]
    for key in need:
        if key not in c:
            raise CanaryError(f"{where}: a {t} check needs `{key}`")
    if t == "kubernetes":
        _kubernetes_fields(c, where)
    if t == "http" or (t == "kubernetes" and "api_url" in c):
        url = c["url"] if t == "http" else c["api_url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise CanaryError(f"{where}: {url!r} is not an http(s) URL")
    if t == "kubernetes" and not str(c["path"]).startswith("/"):
        raise CanaryError(f"{where}.path is the object's API path, like /api/v1/namespaces/prod")
    if t == "tcp" and (isinstance(c["port"], bool) or not isinstance(c["port"], int) or not 0 < c["port"] < 65536):
        raise CanaryError(f"{where}.port must be a port number")
    if t == "command":
        argv = c["argv"]
        if c.get("shell"):
            if not isinstance(argv, str):
                raise CanaryError(f"{where}.argv is one string when shell: true")
        elif not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise CanaryError(f"{where}.argv is a list of strings (no shell unless `shell: true`)")
    for key in ("body_regex", "output_regex"):
        if key in c:
            try:
                re.compile(c[key])
            except (re.error, TypeError) as exc:
                raise CanaryError(f"{where}.{key} is not a regex ({exc})") from None


def _kubernetes_fields(c: dict[str, Any], where: str) -> None:
    """Exactly one way to reach the cluster: api_url (+ token), a kubeconfig (file and/or
    context), or in_cluster - as kubectl never mixes a --server with a context's."""
    ways = [w for w, on in (("api_url", "api_url" in c), ("kubeconfig/context", "kubeconfig" in c or "context" in c),
                            ("in_cluster", bool(c.get("in_cluster")))) if on]
    if len(ways) != 1:
        raise CanaryError(f"{where}: say how to reach the cluster with exactly one of `api_url` (+ `token_file`), "
                          f"`kubeconfig`/`context`, or `in_cluster: true`" + (f"; got {' and '.join(ways)}" if ways else ""))
    if "in_cluster" in c and not isinstance(c["in_cluster"], bool):
        raise CanaryError(f"{where}.in_cluster is true or false")
    for key in ("kubeconfig", "context"):
        if key in c and not (isinstance(c[key], str) and c[key]):
            raise CanaryError(f"{where}.{key} must be a " + ("file path" if key == "kubeconfig" else "context name"))
    if ways[0] != "api_url" and ({"token", "token_file", "ca_file"} & set(c)):
        raise CanaryError(f"{where}: `token`/`token_file`/`ca_file` go with `api_url`; a kubeconfig or the "
                          "in-cluster service account says who the canary is and which CA to trust")


def _known(raw: dict, keys: set[str], where: str) -> None:
    extra = sorted(set(raw) - keys)
    if extra:
        raise CanaryError(f"{where}: unknown key `{extra[0]}`; known: {', '.join(sorted(keys))}")


def _duration(raw: dict, key: str, where: str) -> float:
    try:
        return parse_duration(str(raw[key]))
    except TimeError as exc:
        raise CanaryError(f"{where}.{key}: {exc}") from None


# --- running ---------------------------------------------------------------------------------

def run(canary: Canary) -> Result:
    """Run the check, bounded by the canary's timeout, whatever the check does."""
    box: list[Result] = []
    started = time.monotonic()
    proc_box: list[subprocess.Popen] = []

    def target():
        try:
            box.append(CHECKS[canary.kind](canary.check, canary.timeout, proc_box))
        except Exception as exc:                # a check's bug is a failed check, said plainly
            box.append(Result(False, f"the check itself failed: {type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=target, name=f"canary-{canary.name}", daemon=True)
    worker.start()
    worker.join(canary.timeout + 1.0)
    seconds = time.monotonic() - started
    if not box:
        for p in proc_box:
            _kill(p)
        return Result(False, f"timed out after {canary.timeout:g}s (the check was stopped)", seconds=seconds,
                      timed_out=True)
    result = box[0]
    result.seconds = seconds
    # the result is the alert - Slack, webhooks, syslog, files - which no log masking reaches
    result.summary, result.detail = mask(result.summary), mask(result.detail)
    return result


def _http(c: dict[str, Any], timeout: float, _procs) -> Result:
    req = urllib.request.Request(c["url"], method=c.get("method", "GET"), headers=c.get("headers") or {})
    ctx = _tls(c)
    expect = c.get("expect_status", 200)
    expect = set(expect) if isinstance(expect, list) else {expect}
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            status, body = resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
            return Result(False, f"no answer from {c['url']} within {timeout:g}s", timed_out=True)
        return Result(False, f"cannot reach {c['url']}: {reason}")
    text = body.decode("utf-8", "replace")
    if status not in expect:
        return Result(False, f"HTTP {status} from {c['url']} (expected {', '.join(map(str, sorted(expect)))})",
                      detail=text[:BODY_KEPT])
    if "body_regex" in c and not re.search(c["body_regex"], text):
        return Result(False, f"the body of {c['url']} does not match /{c['body_regex']}/", detail=text[:BODY_KEPT])
    if "json_path" in c:
        try:
            value = json_path(json.loads(text), c["json_path"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Result(False, f"{c['json_path']} is not in the JSON from {c['url']} ({exc})", detail=text[:BODY_KEPT])
        if "json_equals" in c and value != c["json_equals"]:
            return Result(False, f"{c['json_path']} is {value!r} at {c['url']} (expected {c['json_equals']!r})")
    return Result(True, f"HTTP {status} from {c['url']}")


def _tcp(c: dict[str, Any], timeout: float, _procs) -> Result:
    try:
        with socket.create_connection((c["host"], c["port"]), timeout=timeout):
            return Result(True, f"{c['host']}:{c['port']} accepts connections")
    except socket.timeout:
        return Result(False, f"no answer from {c['host']}:{c['port']} within {timeout:g}s", timed_out=True)
    except OSError as exc:
        return Result(False, f"cannot connect to {c['host']}:{c['port']}: {exc.strerror or exc}")


def _command(c: dict[str, Any], timeout: float, procs) -> Result:
    shell = bool(c.get("shell"))
    argv = c["argv"]
    shown = argv if shell else " ".join(argv)
    try:
        p = subprocess.Popen(argv, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True,          # its own group: a timeout kills it all
                             env=environ_for_children())      # its output is the alert: not Slack's tokens
    except OSError as exc:
        return Result(False, f"cannot run `{shown}`: {exc.strerror or exc}")
    procs.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(p)
        return Result(False, f"`{shown}` ran past {timeout:g}s and was killed", timed_out=True)
    text = out.decode("utf-8", "replace")
    want = c.get("expect_exit", 0)
    if p.returncode != want:
        return Result(False, f"`{shown}` exited {p.returncode} (expected {want})", detail=text[-BODY_KEPT:])
    if "output_regex" in c and not re.search(c["output_regex"], text):
        return Result(False, f"the output of `{shown}` does not match /{c['output_regex']}/", detail=text[-BODY_KEPT:])
    return Result(True, f"`{shown}` exited {p.returncode}")


def _kubernetes(c: dict[str, Any], timeout: float, procs) -> Result:
    """The object at `path` must exist: 200 yes, 404 gone; anything else is its own failure.
    How the canary reaches the cluster and as whom is kube.py's (api_url, kubeconfig, in-cluster)."""
    try:
        answer = kube.get(c, c["path"], timeout, procs)          # an exec plugin: killed at the timeout
    except kube.KubeError as exc:
        return Result(False, str(exc))
    except Exception as exc:                   # urllib3: refused, timed out, TLS
        url = _kube_url(c)
        reason = kube.one_line(getattr(exc, "reason", None) or exc)
        if "timed out" in reason.lower() or "timeout" in type(exc).__name__.lower():
            return Result(False, f"no answer from the Kubernetes API at {url} within {timeout:g}s", timed_out=True)
        return Result(False, f"cannot reach the Kubernetes API at {url}: {reason}")
    url = answer.url
    if answer.status == 404:
        what = c["path"].rstrip("/").rsplit("/", 2)
        return Result(False, f"{what[-2].rstrip('s')} {what[-1]} is gone: 404 from {url}")
    if answer.status in (401, 403):
        return Result(False, f"the Kubernetes API refused the canary's credentials ({answer.status}) at {url}")
    if answer.status != 200:
        return Result(False, f"HTTP {answer.status} from the Kubernetes API at {url}",
                      detail=answer.body[:BODY_KEPT].decode("utf-8", "replace"))
    try:
        obj = json.loads(answer.body or b"{}")
    except ValueError as exc:
        return Result(False, f"the Kubernetes API at {url} answered 200 with no JSON ({exc})")
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Result(False, f"{obj.get('kind', 'object')} {meta.get('name')} is being deleted "
                             f"(since {meta['deletionTimestamp']})")
    return Result(True, f"{obj.get('kind', 'object')} {meta.get('name', c['path'])} exists")


def _kube_url(c: dict[str, Any]) -> str:
    try:
        base = c["api_url"] if "api_url" in c else kube.server_of(c)
    except kube.KubeError:
        base = "(the cluster)"
    return base.rstrip("/") + c["path"]


CHECKS = {"http": _http, "tcp": _tcp, "command": _command, "kubernetes": _kubernetes}


def json_path(obj: Any, path: str) -> Any:
    """`status.conditions[0].type` -> that value. Raises KeyError / IndexError when absent."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
    return obj


def _tls(c: dict[str, Any]):
    if c.get("verify_tls", True) is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=c.get("ca_file") or None)


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
