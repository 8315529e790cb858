"""The HTTP server around the service's app: the listening socket, a header timeout uvicorn lacks, and which
Host names to answer.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on how long a client may
take to send a request's headers, nor on a connection that never sends a byte: a few clients trickling one
byte a second hold connections open forever. :func:`header_timeout_protocol` bounds that time on uvicorn's h11
protocol (used whatever HTTP parser is installed): the clock starts when a connection opens or a new request's
first byte arrives, and stops when h11 has the whole head; if it runs out the server answers 408 (or, before
any byte, just closes) and drops the connection. The body is then the app's business (its request timeout).

Needs the ``serve`` extras (uvicorn, h11).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from agegender.serving.heap import FrozenSurvivors

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is not complete within ``seconds``."""
    if not 0 < seconds < float("inf"):
        raise ValueError(f"header timeout must be a positive number of seconds, got {seconds!r}")

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # h11 keeps the client in IDLE until a request's head is complete.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                return
            if self.conn.trailing_data[0]:  # part of a head arrived: say why the connection ends
                body = json.dumps({"error": "header_timeout", "detail": f"The request headers did not arrive "
                                   f"within {seconds:g} s."}).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                log.info("closed a connection whose request headers took over %g s", seconds)
            self.transport.close()

    return HeaderTimeoutProtocol


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); a one-line ValueError when the address
    cannot be used (unknown name, port in use, no permission), before any model is loaded."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as e:
        raise ValueError(f"--host {host}: not an address this machine can listen on ({e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart right after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    return sock


def allowed_hosts(option: str, host: str) -> list[str] | None:
    """The Host names to answer (None: any) from ``--allowed-hosts`` and the listening address ``host``.

    "auto" answers only loopback names when listening on loopback: a web page elsewhere whose DNS name is
    pointed at 127.0.0.1 (DNS rebinding) then cannot read the answers through the visitor's browser.

    >>> allowed_hosts("auto", "127.0.0.1"), allowed_hosts("auto", "0.0.0.0"), allowed_hosts("a.org, B.org", "::")
    (['localhost', '127.0.0.1', '::1'], None, ['a.org', 'b.org'])
    """
    if option == "auto":
        return list(LOOPBACK_NAMES) if _is_loopback(host) else None
    names = [n.strip().lower() for n in option.split(",") if n.strip()]
    if not names:
        raise ValueError("--allowed-hosts is empty: give host names, * for any, or auto")
    return None if "*" in names else names


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def quiet_websocket_protocol() -> type:
    """uvicorn's WebSocket protocol, closing a connection that sends text that is not UTF-8 (code 1007) with one
    log line instead of the traceback uvicorn logs for it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class QuietWebSocketProtocol(WebSocketsSansIOProtocol):
        def send_receive_event_to_app(self) -> None:
            if self.curr_msg_data_type == "text" and not self.close_sent:
                try:
                    b"".join(self.frames).decode()
                except UnicodeDecodeError:
                    self.frames = []
                    log.info("closed a WebSocket that sent text that is not UTF-8")
                    self.conn.send_close(1007, "text frames must be UTF-8")
                    self.handle_parser_exception()
                    return
            super().send_receive_event_to_app()

    return QuietWebSocketProtocol


class RepeatsHeldBack(logging.Filter):
    """Lets a record whose message starts with one of ``prefixes`` through once per ``interval_s`` seconds, without
    its traceback, saying how many like it were held back. Out of file descriptors, asyncio logs "socket.accept()
    out of system resource" with a traceback for each of up to 2,048 accepts a second (the backlog): 6 MB of log in
    5 s, 183 MB a minute."""

    def __init__(self, prefixes: tuple[str, ...], interval_s: float = 10.0) -> None:
        super().__init__()
        self.prefixes, self.interval_s = prefixes, interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        prefix = next((p for p in self.prefixes if message.startswith(p)), None)
        if prefix is None:
            return True
        now = time.monotonic()
        if now - self._last.get(prefix, -math.inf) < self.interval_s:
            self._held[prefix] = self._held.get(prefix, 0) + 1
            return False
        held, self._last[prefix], self._held[prefix] = self._held.get(prefix, 0), now, 0
        record.msg, record.args = prefix + (f" ({held} more like it held back)" if held else ""), ()
        record.exc_info = record.exc_text = None
        return True


ACCEPT_FAILED = "socket.accept() out of system resource"


def raise_open_files_limit(want: int = 65536) -> int:
    """Raise this process's soft limit of open files towards ``want`` (never above the hard limit) and return it:
    every connection holds one, and at the usual soft limit of 1,024 a thousand idle sockets left none for the
    next request (the service's own caps on connections are the real bound; this is their headroom)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def serve(app: Callable[..., Any], sock: socket.socket, header_timeout: float, quiet: bool) -> bool:
    """Run ``app`` on ``sock`` until Ctrl-C or SIGTERM; False if the server did not start."""
    import uvicorn

    # No per-message compression on WebSockets: the frames are JPEG, which does not shrink, and each connection's
    # compressor cost memory and CPU for nothing.
    config = uvicorn.Config(app, http=header_timeout_protocol(header_timeout), ws=quiet_websocket_protocol(),
                            ws_per_message_deflate=False, log_config=None, log_level="warning" if quiet else "info")
    flood_guard = RepeatsHeldBack((ACCEPT_FAILED,))
    logging.getLogger("asyncio").addFilter(flood_guard)
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGTERM, then raises it again for the handler it found: a stop that was asked for
    # (a container runtime's, a service manager's) ends in success, exit 0, not in the CLI's "terminated" (143).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None) if in_main else None
    try:
        with FrozenSurvivors():  # short collector pauses with many sockets open (see agegender.serving.heap)
            server.run(sockets=[sock])
    finally:
        logging.getLogger("asyncio").removeFilter(flood_guard)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return server.started
