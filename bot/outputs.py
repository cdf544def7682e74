"""Outputs beyond Slack: a signed JSON webhook and syslog (RFC 5424), for canary alerts and the
change digest - so PagerDuty, Opsgenie, Teams (through their webhook adapters) and SIEMs take them.

    outputs:                                   # top level: named outputs
      - {name: oncall, type: webhook, url: https://..., secret_file: /etc/whodid/webhook.secret}
      - {name: siem, type: syslog, address: "udp://siem.internal:514", facility: local0}
    canaries: [{name: ..., channel: "#ops", outputs: [oncall, siem], ...}]
    changes: {digest: {channel: "#changes", outputs: [siem]}}

Rules:
- an event is one JSON object (EVENT_SCHEMA, docs/canaries.md shows it); its `id` is the same
  however often it is offered. The outbox sends an id once (it remembers ids sent for
  SENT_KEPT); delivery is at least once - a receiver that answered after its timeout gets
  the event again - so a receiver drops duplicates by `id`;
- nothing waits for an output: `Outbox.put` writes the event to a private spool file (one
  directory per output) and returns; one thread per output delivers its spool in order, so a
  webhook that hangs holds up neither a canary nor another output. What could not be delivered
  stays spooled - across restarts, up to MAX_PENDING events an output, the oldest dropped and
  said past it - and is tried again every RETRY_EVERY seconds;
- a webhook POST is signed: `X-Whodid-Signature: sha256=HMAC-SHA256(secret, "{timestamp}." + body)`
  with the timestamp in `X-Whodid-Timestamp` (seconds), so a receiver checks both that whodid sent
  it and that it is fresh (a replay is old). It is retried with backoff on 5xx, 429 (its
  Retry-After honoured) and connection errors; any other 4xx is the receiver refusing the body,
  which sending it again will not change: the event is set aside in `refused/` and said in the log;
- syslog gets one RFC 5424 line per event: `<PRI>1 TIMESTAMP HOST whodid PID MSGID [SD] MSG`, the
  MSG the event's JSON (or its text with `format: text`) within MAX_SYSLOG bytes (`fit`), over
  UDP, TCP (newline framed, RFC 6587) or the local /dev/log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from whodid import logs, private
from whodid.tracer.when import TimeError, iso, parse_duration

EVENT_SCHEMA = "whodid.event/1"
TYPES = ("webhook", "syslog")
KEYS = {
    "webhook": {"name", "type", "url", "secret_file", "timeout", "retries", "backoff", "verify_tls", "ca_file"},
    "syslog": {"name", "type", "address", "facility", "app_name", "format"},
}
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
              "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{i}": 16 + i for i in range(8)}}
SEVERITY = {"alert": 3, "again": 3, "recovered": 5, "digest": 6}      # err, notice, info
SD_ID = "whodid@32473"      # 32473: the enterprise number RFC 5612 sets aside for examples
RETRY_EVERY = 30.0
MAX_SYSLOG = 8192            # bytes of MSG: rsyslog's default maxMessageSize; UDP takes little more
SENT_KEPT = 30 * 86400.0      # how long an id sent is remembered, so it is not sent twice
MAX_BACKOFF = 60.0
MAX_PENDING = 10000          # events spooled per output: a receiver down for days fills no disk


class OutputError(ValueError):
    pass


class DeliveryError(Exception):
    """Not delivered this time; `refused` when sending it again cannot help (a 4xx)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    url: str = ""
    secret_file: str = ""
    timeout: float = 10.0
    retries: int = 4                    # attempts after the first, within one delivery
    backoff: float = 1.0                # the first wait; doubled after each failure
    verify_tls: bool = True
    ca_file: str = ""
    address: str = "/dev/log"           # /dev/log, udp://host:514, tcp://host:601 (host:port is UDP)
    facility: str = "user"
    app_name: str = "whodid"
    format: str = "json"                # syslog's MSG: the event's json, or its text


# --- parsing ---------------------------------------------------------------------------------

def parse_outputs(raw: Any) -> dict[str, Output]:
    """The top-level `outputs` list, by name. Raises OutputError naming the entry at fault."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise OutputError("`outputs` is a list of outputs, each with a name and a type (webhook, syslog)")
    out: dict[str, Output] = {}
    for i, item in enumerate(raw):
        o = parse_output(item, f"outputs[{i}]")
        if o.name in out:
            raise OutputError(f"two outputs are named {o.name!r}")
        out[o.name] = o
    return out


def parse_output(raw: Any, where: str) -> Output:
    if not isinstance(raw, dict):
        raise OutputError(f"{where} must be a mapping with a name and a type")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise OutputError(f"{where}.name must be a short name (letters, digits, - _ .), got {name!r}")
    where = f"output {name}"
    t = raw.get("type")
    if t not in TYPES:
        raise OutputError(f"{where}.type is one of {', '.join(TYPES)}, got {t!r}")
    extra = sorted(set(raw) - KEYS[t])
    if extra:
        raise OutputError(f"{where}: unknown key `{extra[0]}` for a {t} output; known: {', '.join(sorted(KEYS[t]))}")
    fields: dict[str, Any] = {"name": name, "type": t}
    for key in ("timeout", "backoff"):
        if key in raw:
            try:
                fields[key] = parse_duration(str(raw[key]))
            except TimeError as exc:
                raise OutputError(f"{where}.{key}: {exc}") from None
    for key in ("url", "secret_file", "ca_file", "address", "facility", "app_name", "format"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise OutputError(f"{where}.{key} must be a string, got {raw[key]!r}")
            fields[key] = raw[key]
    if "retries" in raw:
        if isinstance(raw["retries"], bool) or not isinstance(raw["retries"], int) or not 0 <= raw["retries"] <= 20:
            raise OutputError(f"{where}.retries is a whole number from 0 to 20")
        fields["retries"] = raw["retries"]
    if "verify_tls" in raw:
        if not isinstance(raw["verify_tls"], bool):
            raise OutputError(f"{where}.verify_tls is true or false")
        fields["verify_tls"] = raw["verify_tls"]
    o = Output(**fields)
    if t == "webhook":
        if not o.url.startswith(("http://", "https://")):
            raise OutputError(f"{where}.url is the http(s) URL to POST to, got {o.url!r}")
        if not o.secret_file:
            raise OutputError(f"{where}.secret_file is required: the file holding the shared secret the POSTs "
                              "are signed with (make one with `openssl rand -hex 32`)")
    else:
        if o.facility not in FACILITIES:
            raise OutputError(f"{where}.facility is one of {', '.join(FACILITIES)}, got {o.facility!r}")
        if o.format not in ("json", "text"):
            raise OutputError(f"{where}.format is json or text, got {o.format!r}")
        try:
            syslog_address(o.address)
        except ValueError as exc:
            raise OutputError(f"{where}.address: {exc}") from None
        if not re.fullmatch(r"[!-~]{1,48}", o.app_name):
            raise OutputError(f"{where}.app_name is 1 to 48 printable ASCII characters, no spaces")
    return o


def check_names(names: tuple[str, ...], outputs: dict[str, Output], where: str) -> None:
    """A canary's or the digest's `outputs` must name outputs the config defines."""
    for n in names:
        if n not in outputs:
            known = ", ".join(outputs) or "none are defined (top-level `outputs`)"
            raise OutputError(f"{where}.outputs names {n!r}, which is not an output; known: {known}")


def names_of(raw: Any, where: str) -> tuple[str, ...]:
    """A canary's or the digest's `outputs: [name, ...]`, as parsed."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise OutputError(f"{where}.outputs is a list of output names (see the top-level `outputs`)")
    return tuple(raw)


# --- events ----------------------------------------------------------------------------------

def event(kind: str, event_id: str, text: str, now: float, **body: Any) -> dict[str, Any]:
    """One event as every output sends it: schema, id, event, sent_at, text, then its body."""
    return {"schema": EVENT_SCHEMA, "id": event_id, "event": kind, "sent_at": iso(now), "text": text, **body}


def encode(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False, default=str).encode()


# --- the webhook -----------------------------------------------------------------------------

def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` over "{timestamp}." + body: the timestamp is signed too, so it cannot be
    swapped for a fresh one on a replayed body."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str, now: float, tolerance: float = 300.0) -> bool:
    """What a receiver does (and the tests): the signature matches and the timestamp is fresh."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


def shown_url(url: str) -> str:
    """A webhook URL as errors show it: Teams, PagerDuty and Azure Functions carry the secret in
    its path or query, so a path part long enough to be a key and the query become ***."""
    parts = urlsplit(url)
    path = "/".join("***" if len(seg) >= 16 else seg for seg in parts.path.split("/"))
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{path}" + ("?***" if parts.query else "")


class Webhook:
    def __init__(self, spec: Output, sleep: Callable[[float], None] = time.sleep):
        self.spec = spec
        self.sleep = sleep
        self.shown = shown_url(spec.url)

    def secret(self) -> bytes:
        """Read at each delivery, so rotating the file needs no restart; refused if others may read it."""
        try:
            private.check_secret(self.spec.secret_file, f"output {self.spec.name}'s secret_file")
            with open(self.spec.secret_file, "rb") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise DeliveryError(f"cannot read the webhook secret {self.spec.secret_file}: {exc.strerror}") from None
        except private.PrivateFileError as exc:
            raise DeliveryError(str(exc)) from None
        if not secret:
            raise DeliveryError(f"the webhook secret file {self.spec.secret_file} is empty")
        return secret

    def send(self, ev: dict[str, Any]) -> None:
        """POST the event, up to 1 + retries times with backoff. Raises DeliveryError."""
        body, secret = encode(ev), self.secret()
        wait, last = self.spec.backoff, ""
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF)
            ts = str(int(time.time()))                # signed afresh: a late retry is still fresh
            req = urllib.request.Request(self.spec.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": "whodid",
                "X-Whodid-Event": ev["event"], "X-Whodid-Delivery": ev["id"],
                "X-Whodid-Timestamp": ts, "X-Whodid-Signature": signature(secret, ts, body)})
            try:
                with _opener(self._tls()).open(req, timeout=self.spec.timeout) as resp:
                    resp.read(1 << 16)
                return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.shown}"
                if exc.code == 429:
                    wait = max(wait, _retry_after(exc.headers.get("Retry-After")))
                elif 300 <= exc.code < 400:
                    raise DeliveryError(f"{last}: a redirect to {exc.headers.get('Location')!r}, not followed; set "
                                        "the url to where it leads", refused=True) from None
                elif exc.code < 500 and exc.code != 408:
                    raise DeliveryError(f"{last}: the receiver refused the event", refused=True) from None
            except (urllib.error.URLError, OSError) as exc:
                last = f"cannot reach {self.shown}: {getattr(exc, 'reason', exc)}"
        raise DeliveryError(f"{last} ({self.spec.retries + 1} attempts)")

    def _tls(self):
        if not self.spec.url.startswith("https://"):
            return None
        if not self.spec.verify_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.spec.ca_file or None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed: urllib would turn the POST into a GET without the body, and
    a 200 from wherever it led would count as delivered. A 3xx is the receiver refusing."""

    def redirect_request(self, *args, **kw):
        return None


def _opener(ctx):
    return urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=ctx))


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), MAX_BACKOFF)
    except ValueError:
        return 0.0


# --- syslog ----------------------------------------------------------------------------------

def syslog_address(address: str) -> tuple[str, Any]:
    """("unix", path) | ("udp", (host, port)) | ("tcp", (host, port)). Raises ValueError."""
    if address.startswith("/"):
        return "unix", address
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "udp", address
    if scheme not in ("udp", "tcp"):
        raise ValueError(f"{address!r} is /dev/log (a path), udp://host:514 or tcp://host:601")
    url = urlsplit(f"//{rest}")
    try:
        port = url.port or 514
    except ValueError:
        raise ValueError(f"{address!r} has no valid port") from None
    if not url.hostname:
        raise ValueError(f"{address!r} names no host")
    return scheme, (url.hostname, port)


def _sd_value(value: Any) -> str:
    return re.sub(r'(["\\\]])', r"\\\1", str(value))


def syslog_line(ev: dict[str, Any], spec: Output, now: float, hostname: str, pid: int) -> bytes:
    """One RFC 5424 message (the header, the structured data, the message), without framing."""
    pri = FACILITIES[spec.facility] * 8 + SEVERITY.get(ev["event"], 6)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    sd = {"event": ev["event"], "id": ev["id"]}
    if ev.get("canary"):
        sd["canary"] = ev["canary"]
    params = " ".join(f'{k}="{_sd_value(v)}"' for k, v in sd.items())
    msg = (fit(ev, MAX_SYSLOG).decode() if spec.format == "json" else " ".join(str(ev.get("text", "")).split())
           [:MAX_SYSLOG])
    host = re.sub(r"[^!-~]", "", hostname)[:255] or "-"
    return f"<{pri}>1 {stamp} {host} {spec.app_name} {pid} {ev['event']} [{SD_ID} {params}] {msg}".encode()


def fit(ev: dict[str, Any], limit: int) -> bytes:
    """The event's JSON within `limit` bytes: whole if it fits, else its head fields, the review's
    summary and as much text as fits, marked `"truncated": true` - still JSON, never cut mid-way
    (a digest of a busy day is far past what a syslog receiver takes; the webhook has it whole)."""
    whole = encode(ev)
    if len(whole) <= limit:
        return whole
    slim = {k: ev[k] for k in ("schema", "id", "event", "sent_at", "canary", "failing_since", "result") if k in ev}
    if isinstance(ev.get("review"), dict):
        slim["summary"] = ev["review"].get("summary")
    slim["truncated"] = True
    text = str(ev.get("text", ""))
    room = limit - len(encode({**slim, "text": ""})) - 16
    while text and room > 0:
        out = encode({**slim, "text": text[:room]})
        if len(out) <= limit:
            return out
        room -= max(len(out) - limit, 16)
    return encode(slim)


class Syslog:
    def __init__(self, spec: Output):
        self.spec = spec

    def send(self, ev: dict[str, Any]) -> None:
        line = syslog_line(ev, self.spec, time.time(), socket.gethostname(), os.getpid())
        kind, where = syslog_address(self.spec.address)
        try:
            if kind == "tcp":
                with socket.create_connection(where, timeout=10) as s:
                    s.sendall(line + b"\n")              # RFC 6587 non-transparent framing
            elif kind == "udp":
                family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.sendto(line, where)
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.sendto(line, where)
        except OSError as exc:
            raise DeliveryError(f"cannot send to syslog at {self.spec.address}: {exc.strerror or exc}") from None


def sender(spec: Output):
    return Webhook(spec) if spec.type == "webhook" else Syslog(spec)


# --- the outbox: at least once, nothing waits ------------------------------------------------

class Outbox:
    """Events spooled per output and delivered by one thread per output (see the module's rules)."""

    def __init__(self, outputs: dict[str, Output], spool: str | os.PathLike, log=None, senders=None):
        self.outputs = outputs
        self.spool = Path(spool)
        self.log = log if isinstance(log, logs.Log) else logs.get("outputs", log)
        self.senders = senders or {name: sender(spec) for name, spec in outputs.items()}
        self.wake = {name: threading.Event() for name in outputs}
        self.idle = {name: threading.Event() for name in outputs}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.seq = 0

    def put(self, names: tuple[str, ...] | list[str], ev: dict[str, Any]) -> None:
        """Spool the event for each named output. The same id twice is spooled once while pending."""
        data = json.dumps(ev, indent=None, default=str) + "\n"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ev["id"])[:150]
        for name in names:
            d = self.spool / name
            private.make_dirs(d)
            pending = sorted(d.glob("*.json"))
            if (d / "sent" / safe).exists() or any(p.name.endswith(f"-{safe}.json") for p in pending):
                continue                   # offered again (the runner retrying Slack): sent or waiting
            for old in pending[:max(len(pending) - MAX_PENDING + 1, 0)]:
                old.unlink(missing_ok=True)   # the newest say the most about now
                self.log.error(f"output {name}: {MAX_PENDING} events wait undelivered; dropped the oldest, "
                               f"{old.name}, to spool {ev['id']}")
            with self.lock:
                self.seq += 1
                seq = self.seq
            private.write_file(d / f"{time.time():017.6f}-{seq:06d}-{safe}.json", data)
            with self.lock:
                self.wake[name].set()
                self.idle[name].clear()

    def start(self) -> "Outbox":
        for name in self.outputs:
            t = threading.Thread(target=self._loop, args=(name,), name=f"output-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.stopping.set()
        for e in self.wake.values():
            e.set()
        for t in self.threads:
            t.join(grace)

    def wait_idle(self, name: str, timeout: float) -> bool:
        """True once the output's spool is empty (for tests and a graceful stop)."""
        return self.idle[name].wait(timeout)

    def deliver(self, name: str) -> int:
        """Deliver the output's spool in order, stopping at the first failure. The number left."""
        d = self.spool / name
        pending = sorted(d.glob("*.json")) if d.is_dir() else []
        for i, path in enumerate(pending):
            try:
                ev = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                self.log.error(f"output {name}: cannot read spooled {path.name} ({exc}); set aside")
                self._set_aside(path, "unreadable")
                continue
            try:
                self.senders[name].send(ev)
            except DeliveryError as exc:
                if exc.refused:
                    self.log.error(f"output {name}: {exc}; {ev.get('event')} {ev.get('id')} set aside in "
                             f"{d / 'refused'} and not sent again")
                    self._set_aside(path, "refused")
                    continue
                self.log.warning(f"output {name}: {ev.get('event')} {ev.get('id')} not delivered ({exc}); "
                         f"{len(pending) - i} waiting, trying again in {RETRY_EVERY:g}s")
                return len(pending) - i
            self._mark_sent(d, path)
        return 0

    def _mark_sent(self, d: Path, path: Path) -> None:
        """Remember the id (an empty file in sent/, kept SENT_KEPT) so the same event offered
        again is not sent again; then forget the event."""
        private.make_dirs(d / "sent")
        safe = path.name.split("-", 2)[2][:-len(".json")]
        private.write_file(d / "sent" / safe, b"")
        path.unlink(missing_ok=True)
        cutoff = time.time() - SENT_KEPT
        for old in (d / "sent").iterdir():
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass

    def _set_aside(self, path: Path, why: str) -> None:
        private.make_dirs(path.parent / why)
        os.replace(path, path.parent / why / path.name)

    def _loop(self, name: str) -> None:
        while not self.stopping.is_set():
            self.wake[name].clear()
            try:
                left = self.deliver(name)
            except Exception as exc:                 # a bug or the disk: said, and tried again
                self.log.error(f"output {name}: delivery failed: {type(exc).__name__}: {exc}")
                left = 1
            with self.lock:                          # idle only if nothing was put meanwhile
                if not left and not self.wake[name].is_set():
                    self.idle[name].set()
            self.wake[name].wait(RETRY_EVERY if left else None)
