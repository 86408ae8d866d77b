"""An HTTP proxy in front of the S3 server that injects faults: 5xx answers, dropped connections,
bodies cut short and writes that are acknowledged but never stored."""
from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What to do with one request: None forwards it; 500 / 503 answer that status; "drop" closes the
# connection without an answer; "cut" forwards and sends half the answer's body, then closes;
# "lose" answers 200 to a PUT without storing it; "swallow" forwards the request (it is stored) and
# closes the connection without an answer; a float forwards the request after that many seconds.
Rule = Callable[[int, str, str], "int | float | str | None"]  # (request number from 0, method, path) -> action

ERROR_CODES = {500: b"InternalError", 502: b"BadGateway", 503: b"SlowDown"}


def answer_status(status: int, when: Callable[[int], bool]) -> Rule:
    """A rule that answers ``status`` to request ``n`` (counted from 0) while ``when(n)``."""
    return lambda n, method, path: status if when(n) else None


class FaultProxy:
    """Forwards HTTP to ``upstream``, doing to each request what ``rule`` says; ``delay`` seconds are
    added to every forwarded request. ``requests``, ``injected`` and ``log`` ((method, path) of each
    request) tell what happened."""

    def __init__(self, upstream: str, rule: Rule = lambda n, method, path: None, delay: float = 0.0) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.rule = rule
        self.delay = delay
        self.requests = 0
        self.injected: list[tuple[str, str, str]] = []  # (action, method, path)
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    number = proxy.requests
                    proxy.requests += 1
                    action = proxy.rule(number, self.command, self.path)
                    proxy.log.append((self.command, self.path))
                    if action is not None:
                        proxy.injected.append((str(action), self.command, self.path))
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                               + ERROR_CODES.get(action, b"InternalError") + b"</Code><Message>Injected failure"
                               b"</Message></Error>")
                    self._answer(action, [("Content-Type", "application/xml")], payload)
                    return
                if action == "lose" and self.command == "PUT":
                    self._answer(200, [("ETag", '"00000000000000000000000000000000"')], b"")
                    return
                time.sleep(action if isinstance(action, float) else proxy.delay)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                kept = [(k, v) for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                if action == "swallow":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "cut" and len(data) > 1:
                    self.send_response(response.status)
                    for key, value in kept:
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "cut":  # nothing to cut short: the request went through untouched
                    with proxy._lock:
                        proxy.injected.remove(("cut", self.command, self.path))
                self._answer(response.status, kept, data)

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def failed(self) -> int:
        """Requests answered with a fault instead of being forwarded whole."""
        return len(self.injected)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
