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
import socket
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

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


def serve(app: Callable[..., Any], sock: socket.socket, header_timeout: float, quiet: bool) -> bool:
    """Run ``app`` on ``sock`` until Ctrl-C or SIGTERM; False if the server did not start."""
    import uvicorn

    config = uvicorn.Config(app, http=header_timeout_protocol(header_timeout), log_config=None,
                            log_level="warning" if quiet else "info")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return server.started
