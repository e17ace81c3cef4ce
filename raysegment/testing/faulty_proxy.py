"""A TCP proxy on 127.0.0.1 that fails chosen S3 requests, and forwards the rest unchanged.

Put it in front of an S3 endpoint (moto, MinIO) to prove that transient failures are retried by the S3
client's own retry strategy, and that a request that keeps failing ends in an error (or, in bulk
inference, in that input's error row), never a hang. Ray workers reach it over TCP like any endpoint.

Each connection carries exactly one request: the proxy reads the request head, adds `Connection: close`
before forwarding it, so the client opens a new connection for its next request and every request
(every retry attempt included) passes the fault decision below.

Faults are armed with `fail_first` / `fail_next(n)` and apply to the next n requests whose request line
contains `match` (every request when `match` is None):
  "http500"  answer an S3-style `500 InternalError` (the body, if it has a Content-Length, is drained);
  "drop"     close the connection without any answer (the client sees an empty reply / a reset);
  "stall"    never answer until the proxy stops (the client's request timeout must fire).

Latency: `delay_ms` holds every forwarded request that long before passing it on (a first-byte latency
like AWS S3's, for bench/s3_latency.py); it can be changed while the proxy runs.

The head of every request is kept in `heads`, so a test can check what the client sent (e.g. whether a
request was signed).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

_S3_500 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected by FaultyProxy</Message></Error>"
)
MODES = ("http500", "drop", "stall")
_HEAD_LIMIT = 65536  # bytes: S3 request heads are a few hundred


@dataclass
class FaultyProxy:
    """Proxy 127.0.0.1:<port> -> target_host:target_port; see the module doc for the faults."""

    target_host: str
    target_port: int
    fail_first: int = 0  # faults armed at start
    mode: str = "http500"
    match: str | None = None  # only requests whose request line contains this (e.g. an object key)
    port: int = 0  # 0: pick a free port on start()
    delay_ms: float = 0.0  # added to every forwarded request (latency mode)
    faults: int = 0  # requests failed so far
    requests: int = 0  # requests seen so far (failed or forwarded)
    heads: list[bytes] = field(default_factory=list)  # every request head, in arrival order
    _pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: socket.socket | None = None
    _accept_thread: threading.Thread | None = None
    _open: set = field(default_factory=set)  # sockets to close on stop(), so no thread outlives it

    def start(self) -> FaultyProxy:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self._pending = self.fail_first
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        server.settimeout(0.2)  # so the accept loop notices stop() quickly
        self.port = server.getsockname()[1]
        self._server = server
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, mode: str | None = None, match: str | None = None) -> None:
        """Fail the next `n` requests (matching `match`, in `mode`; None keeps the current setting)."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self.mode = mode or self.mode
            self.match = match if match is not None else self.match
            self._pending = n

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def __enter__(self):  # -> FaultyProxy
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _release(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(socks)
        for sock in socks:
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            self._track(client)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, rest = _read_head(client)
            if not head:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.requests += 1
                self.heads.append(head)
                fail = self._pending > 0 and (self.match is None or self.match in request_line)
                if fail:
                    self._pending -= 1
                    self.faults += 1
                mode = self.mode
            if fail:
                self._fail(client, mode, head, rest)
                return
            if self.delay_ms > 0 and self._stop.wait(self.delay_ms / 1000.0):
                return  # stopping
            upstream = self._track(socket.create_connection((self.target_host, self.target_port), timeout=10))
            upstream.settimeout(None)
            client.settimeout(None)
            upstream.sendall(_with_connection_close(head) + rest)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            self._release(client, *([upstream] if upstream is not None else []))

    def _fail(self, client: socket.socket, mode: str, head: bytes, body: bytes) -> None:
        if mode == "drop":
            return  # the caller closes the connection: no answer at all
        if mode == "stall":
            self._stop.wait()
            return
        length = _content_length(head)
        try:  # drain a declared body, so closing does not turn our answer into a TCP reset
            while len(body) < length:
                chunk = client.recv(65536)
                if not chunk:
                    break
                body += chunk
        except OSError:
            pass
        client.sendall(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(_S3_500)}\r\nConnection: close\r\n\r\n".encode()
            + _S3_500
        )


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(request head without the blank line, bytes already received after it). 10 s of silence ends it."""
    sock.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < _HEAD_LIMIT:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


def _with_connection_close(head: bytes) -> bytes:
    """The head with its Connection header replaced by `Connection: close` (one request per connection)."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
