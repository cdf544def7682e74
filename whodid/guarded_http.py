"""The HTTP server under the collector, the Slack endpoint and the trace pages: the standard
library's http.server, with everything a client can hold before it is authenticated bounded.

Rules (docs/collector.md, "Limits and deadlines"):
- Connections: at most `max_connections` at once, one thread each. One more is answered 503
  by the accept loop itself, without a thread and without waiting for the client, and closed.
- Deadlines are totals, never per-recv timeouts that a byte every few seconds would reset:
    idle   - a new or kept-alive connection waiting for the first byte of its next request;
    header - from a request's first byte to the end of its headers (and the TLS handshake);
    body   - for the whole body, from when the handler starts reading it;
    write  - for sending one answer, to a client that does not read it.
  Each recv/send waits at most until the deadline, and a watchdog thread cuts any connection
  past its deadline whatever it is blocked in. A late header or body gets a 408; a connection
  idle too long is closed quietly.
- Headers may not exceed MAX_HEADER bytes (431). A body is read only with exactly one
  Content-Length made of digits, at most the handler's limit (else 400 / 411 / 413, unread),
  and never chunked (411): none of our clients needs it, and every ambiguity is refused rather
  than guessed at. What follows a body is read as the next request.
- A connection with input left unread is closed gracefully: shut for writing, its input
  drained for at most LINGER seconds, then closed - closing with unread input makes the kernel
  send a reset, which can destroy the answer before the client reads it.
- stop(): stop accepting, close idle connections at once, let requests in flight finish for
  `grace` seconds, then cut the rest. It returns within grace + about a second, whatever
  the clients do; connection threads are daemons, so none can keep the process alive.
"""

from __future__ import annotations

import io
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

from whodid import logs

MAX_HEADER = 64 << 10          # request line and headers, bytes
READ_CHUNK = 1 << 16
LINGER = 2.0                   # seconds to drain unread input before closing
WATCH_EVERY = 0.25             # the watchdog's period, seconds
_DIGITS = re.compile(r"^[0-9]{1,18}$")

log = logs.get("http")          # a bug in a handler, said once; requests themselves are not logged


@dataclass(frozen=True)
class Deadlines:
    header: float = 10.0
    body: float = 60.0
    idle: float = 30.0
    write: float = 30.0
    grace: float = 5.0         # at stop, for requests in flight


class Refused(Exception):
    """This request cannot be served: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DeadlineExceeded(TimeoutError):
    def __init__(self, phase: str):
        super().__init__(f"the {phase} deadline passed")
        self.phase = phase


class _HeaderTooLarge(Exception):
    pass


class Connection:
    """One client connection: its socket, what it is doing (phase) and until when."""

    def __init__(self, sock: socket.socket, address):
        self.sock = sock
        self.address = address
        self.phase = "idle"
        self.deadline = float("inf")
        self.header_bytes = 0
        self.lock = threading.Lock()          # cut() vs close(): never shut down a reused fd
        self.closed = False

    def enter(self, phase: str, seconds: float | None) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds if seconds is not None else float("inf")
        if phase in ("idle", "header"):
            self.header_bytes = 0

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self.phase)
        return left if left != float("inf") else None

    def cut(self) -> None:
        """Wake whatever this connection's thread is blocked in: its recv returns end of input."""
        with self.lock:
            if not self.closed:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self.lock:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class _Input(io.RawIOBase):
    """The socket as the handler's rfile, every recv bounded by the connection's deadline."""

    def __init__(self, conn: Connection, server: "GuardedServer"):
        self.conn, self.server = conn, server

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        conn = self.conn
        if conn.phase == "idle" and self.server.stopping:
            return 0                                   # stopping: no new requests
        if conn.phase in ("idle", "header"):
            room = MAX_HEADER - conn.header_bytes
            if room <= 0:
                raise _HeaderTooLarge()
            buf = memoryview(buf)[:room]
        conn.sock.settimeout(conn.left())
        try:
            n = conn.sock.recv_into(buf)
        except (socket.timeout, ssl.SSLWantReadError):
            raise DeadlineExceeded(conn.phase) from None
        if n and conn.phase == "idle":
            conn.enter("header", self.server.deadlines.header)
        if conn.phase == "header":
            conn.header_bytes += n
        return n


class _Output(io.RawIOBase):
    """The socket as the handler's wfile: one answer gets `write` seconds, in total."""

    def __init__(self, conn: Connection, server: "GuardedServer"):
        self.conn, self.server = conn, server

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        conn = self.conn
        if conn.phase != "write":
            conn.enter("write", self.server.deadlines.write)
            if self.server.stopping:
                conn.deadline = min(conn.deadline, self.server.stop_deadline)
        conn.sock.settimeout(conn.left())
        try:
            conn.sock.sendall(data)             # since Python 3.5 the timeout bounds the whole call
        except socket.timeout:
            raise DeadlineExceeded("write") from None
        return len(data)


class GuardedServer(HTTPServer):
    """HTTPServer with a connection limit, deadlines, and a stop that cannot be held up."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, *, deadlines: Deadlines = Deadlines(), max_connections: int = 64,
                 tls: ssl.SSLContext | None = None, name: str = "whodid-http"):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.deadlines = deadlines
        self.max_connections = max_connections
        self.tls = tls
        self.name = name
        self.stopping = False
        self.stop_deadline = float("inf")
        self.connections: dict[Connection, threading.Thread] = {}
        self._lock = threading.Lock()
        self._loop: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        super().__init__(address, handler)

    # --- running -------------------------------------------------------------------------

    def start(self) -> "GuardedServer":
        self._loop = threading.Thread(target=self.serve_forever, args=(0.2,), name=self.name, daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
        self._loop.start()
        self._watchdog.start()
        return self

    def begin_stop(self) -> None:
        """Stop accepting and close idle connections now; requests in flight get `grace` seconds.
        Returns at once: stop() waits. Calling it early lets several servers stop together."""
        if self.stopping:
            return
        self.stop_deadline = time.monotonic() + self.deadlines.grace
        self.stopping = True
        if self._loop is not None and self._loop.is_alive():
            self.shutdown()                     # the accept loop ends within its 0.2 s poll
        self.socket.close()
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            if conn.phase == "idle":
                conn.cut()
            else:
                conn.deadline = min(conn.deadline, self.stop_deadline)

    def stop(self) -> None:
        """begin_stop(), then wait for requests in flight until the grace runs out, then cut them."""
        self.begin_stop()
        for conn, thread in self._threads():
            thread.join(max(0.0, self.stop_deadline - time.monotonic()))
        last = time.monotonic() + 1.0                  # cut threads wake at once; one second for all
        for conn, thread in self._threads():
            conn.cut()
        for conn, thread in self._threads():
            thread.join(max(0.0, last - time.monotonic()))

    def _threads(self) -> list[tuple[Connection, threading.Thread]]:
        with self._lock:
            return list(self.connections.items())

    def _watch(self) -> None:
        while not (self.stopping and not self.connections):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self.connections if c.deadline < now - WATCH_EVERY]
            for conn in late:                   # its own recv/send timeout should have fired
                conn.cut()
            time.sleep(WATCH_EVERY)

    # --- connections ---------------------------------------------------------------------

    def process_request(self, request, client_address) -> None:
        if self.stopping:
            request.close()
            return
        with self._lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                conn = Connection(request, client_address)
                conn.enter("header" if self.tls else "idle",
                           self.deadlines.header if self.tls else self.deadlines.idle)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                          name=f"{self.name}-conn")
                self.connections[conn] = thread
        if full:
            self._refuse_busy(request)
            return
        thread.start()

    def _refuse_busy(self, request) -> None:
        # from the accept loop: never wait for this client
        body = (f"{self.max_connections} connections are open, the most this server takes; "
                "retry shortly\n").encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            if not self.tls:
                request.send(head + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()

    def _serve(self, conn: Connection) -> None:
        try:
            if self.tls:
                # the handshake runs on this thread under the header deadline, so a slow or
                # broken client holds neither the accept loop nor its thread for long
                conn.sock.settimeout(self.deadlines.header)
                try:
                    tls_sock = self.tls.wrap_socket(conn.sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                with conn.lock:
                    conn.sock = tls_sock
                conn.enter("idle", self.deadlines.idle)
            self.RequestHandlerClass(conn, conn.address, self)
        except Exception as exc:                    # a bug: one line, never a traceback per client
            if not isinstance(exc, OSError):
                log.error(f"{self.name}: request failed: {exc!r}", server=self.name)
        finally:
            self._linger_and_close(conn)
            with self._lock:
                self.connections.pop(conn, None)

    def _linger_and_close(self, conn: Connection) -> None:
        try:
            conn.enter("closing", min(LINGER, max(0.0, self.stop_deadline - time.monotonic())))
            conn.sock.shutdown(socket.SHUT_WR)
            scratch = bytearray(READ_CHUNK)
            while True:
                conn.sock.settimeout(conn.left())
                if not conn.sock.recv_into(scratch):
                    break
        except (OSError, DeadlineExceeded, ValueError):
            pass
        conn.close()


class GuardedHandler(BaseHTTPRequestHandler):
    """BaseHTTPRequestHandler reading and writing through the connection's deadlines.

    Subclasses answer Refused with refuse() (override it to change the format) and read a
    body with read_body(limit)."""

    protocol_version = "HTTP/1.1"
    server: GuardedServer
    request: Connection

    def setup(self) -> None:
        self.conn = self.request
        self.connection = self.conn.sock
        self.rfile = io.BufferedReader(_Input(self.conn, self.server), READ_CHUNK)
        self.wfile = _Output(self.conn, self.server)

    def finish(self) -> None:
        pass                                           # the server closes the connection

    def log_message(self, fmt, *args) -> None:        # each server logs what matters to it
        pass

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and not self.server.stopping:
            self.conn.enter("idle", self.server.deadlines.idle)
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self.close_connection = True
        self.request_version, self.command, self.requestline = "HTTP/1.1", None, ""
        try:
            try:
                self.raw_requestline = self.rfile.readline(MAX_HEADER + 1)
                if not self.raw_requestline:
                    return
                if len(self.raw_requestline) > MAX_HEADER:
                    raise _HeaderTooLarge()
                if not self.parse_request():           # it has answered (400, 431, 505...)
                    return
            except _HeaderTooLarge:
                return self.refuse(Refused(431, f"the request line and headers exceed {MAX_HEADER} bytes"))
            except DeadlineExceeded as exc:
                if exc.phase == "header":
                    self.refuse(Refused(408, f"the request's headers did not arrive within "
                                             f"{self.server.deadlines.header:g} s"))
                return
            if self.request_version == "HTTP/0.9":
                return self.refuse(Refused(400, "send HTTP/1.0 or HTTP/1.1 requests"))
            self.close_connection = self.close_connection or self.server.stopping
            self.conn.enter("handling", None)
            if self.server.stopping:
                self.conn.deadline = self.server.stop_deadline
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                return self.refuse(Refused(501, f"{self.command} is not supported here"))
            try:
                method()
            except Refused as exc:
                self.refuse(exc)
            except DeadlineExceeded as exc:
                if exc.phase == "body":
                    self.refuse(Refused(408, f"the request's body did not arrive within "
                                             f"{self.server.deadlines.body:g} s"))
                self.close_connection = True
            except OSError:
                raise
            except Exception as exc:                   # a bug: one line in the log, a 500 to the client
                log.error(f"{self.server.name}: {self.command} {self.path.split('?', 1)[0]} failed: {exc!r}",
                          server=self.server.name)
                self.refuse(Refused(500, f"the server failed on this request ({type(exc).__name__}); "
                                         "it is logged"))
        except (DeadlineExceeded, OSError, ValueError):
            self.close_connection = True               # the client is gone or too slow: nothing to answer

    # --- for subclasses ------------------------------------------------------------------

    def body_length(self, limit: int, what: str = "the body", hint: str = "") -> int:
        """The request's Content-Length, if it is one plain number no larger than limit."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise Refused(411, "send the body with a Content-Length, not Transfer-Encoding (chunked)")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise Refused(411, "a Content-Length header is required")
        if len(values) > 1:
            raise Refused(400, f"{len(values)} Content-Length headers; send exactly one")
        text = values[0].strip()
        if not _DIGITS.match(text):
            raise Refused(400, f"Content-Length {text[:40]!r} is not a byte count")
        length = int(text)
        if length > limit:
            raise Refused(413, f"{what} is {length} bytes; the limit is {limit}{hint}")
        return length

    def read_body(self, limit: int, what: str = "the body", hint: str = "") -> bytes:
        """Exactly Content-Length bytes, within the body deadline; Refused otherwise."""
        length = self.body_length(limit, what, hint)
        self.conn.enter("body", self.server.deadlines.body)
        if self.server.stopping:
            self.conn.deadline = min(self.conn.deadline, self.server.stop_deadline)
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(min(READ_CHUNK, length - got))
                if not chunk:
                    raise Refused(400, f"the body ended after {got} of {length} bytes (Content-Length)")
                chunks.append(chunk)
                got += len(chunk)
        except DeadlineExceeded:
            raise Refused(408, f"only {got} of {length} bytes of the body arrived within "
                               f"{self.server.deadlines.body:g} s") from None
        self.conn.enter("handling", None)
        if self.server.stopping:
            self.conn.deadline = self.server.stop_deadline
        return b"".join(chunks)

    def refuse(self, exc: Refused) -> None:
        """Answer a refused request (plain text here) and close the connection."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":       # an unparsable request line: answer in 1.1
            self.request_version = "HTTP/1.1"
        self.send_plain(exc.status, exc.message + "\n")

    def send_plain(self, status: int, text: str, ctype: str = "text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code, message=None, explain=None) -> None:
        # http.server's own refusals (bad request line, too many headers, bad version) go
        # through refuse() too: one format per server, and the connection closed
        self.refuse(Refused(code, f"{message or HTTPStatus(code).phrase}"
                                  + (f": {explain}" if explain else "")))
