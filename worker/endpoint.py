"""The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` on `--metrics-port`.

`respond` decides (pure); two small servers carry it out. A worker process (`--processes 1`)
serves on its own event loop (`serve_on_loop`, asyncio.start_server): an answer at all proves the
loop is alive, which a server thread could not (it would answer while the loop is stuck). The
supervisor of N processes has no event loop and decides from its processes' reports and metric
files, so a thread serves it (`ThreadEndpoint`, the standard library's HTTP server).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from worker.health import Verdict

Response = tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
READ_TIMEOUT_S = 5.0
HOST = "0.0.0.0"  # a probe or Prometheus from outside a container must reach it


class Checks:
    """What the endpoint asks: the metrics as text, liveness, readiness."""

    def __init__(self, scrape: Callable[[], bytes], live: Callable[[], Verdict], ready: Callable[[], Verdict]) -> None:
        self.scrape = scrape
        self.live = live
        self.ready = ready


def respond(method: str, path: str, checks: Checks) -> Response:
    """The response to one request (only GET and HEAD; the query string is ignored)."""
    if method not in ("GET", "HEAD"):
        return 405, TEXT, b"only GET\n"
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, checks.scrape()
    if path in ("/healthz", "/readyz"):
        verdict = checks.live() if path == "/healthz" else checks.ready()
        return (200 if verdict.ok else 503), TEXT, f"{'ok' if verdict.ok else 'not ok'}: {verdict.reason}\n".encode()
    return 404, TEXT, b"not found: /metrics, /healthz, /readyz\n"


async def serve_on_loop(port: int, checks: Checks) -> asyncio.Server:
    """Serve on the running event loop (HTTP/1.0 style: one request per connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, *_ = head.decode("latin-1").split(" ", 2)
            writer.write(_http(*respond(method, path, checks), head_only=method == "HEAD"))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass  # a client that sends no request, or half of one, gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, HOST, port, reuse_address=True)


def _http(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else body)


class ThreadEndpoint:
    """The endpoint in a thread of its own (the supervisor's)."""

    def __init__(self, port: int, checks: Checks) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(head_only=False)

            def do_HEAD(self) -> None:
                self._answer(head_only=True)

            def _answer(self, *, head_only: bool) -> None:
                status, content_type, body = respond("GET", self.path, checks)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not log lines
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-endpoint", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_ready(port: int, timeout_s: float = READ_TIMEOUT_S) -> Verdict:
    """Ask the worker on this machine's `port` whether it is ready (`streamscore worker --check`)."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return Verdict(True, response.read().decode().strip())
    except urllib.error.HTTPError as error:
        return Verdict(False, error.read().decode().strip().removeprefix("not ok: ") or f"HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Verdict(False, f"no worker answers on {url}: {reason}")
