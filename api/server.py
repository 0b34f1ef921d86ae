"""How ``slimscout serve`` runs the app under uvicorn: read timeouts and a clipped access log.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but it waits for ever
on a client that opened a connection and sent nothing, half a request line, or headers and part of
a body: a few hundred such sockets hold the server's file descriptors. ``TimedH11Protocol`` gives
each request ``Settings.request_read_timeout_s`` to arrive whole (headers and body, counted from its
first byte, or from the connection for the first request) and closes the connection when it does not.

uvicorn's access log writes the whole path; ``ClipPaths`` keeps the first ``MAX_LOGGED_PATH``
characters of it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.settings import Settings

log = logging.getLogger(__name__)
MAX_LOGGED_PATH = 200
ACCESS_LOGGER = "uvicorn.access"
_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side while a request is still coming in


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request is not in after ``read_timeout_s``."""

    read_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
            self._disarm()  # the whole request is in (or the connection is going)
        else:
            self._arm()  # a request has begun: keep its deadline, or start one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection of %s: no complete request in %.1f s", client, self.read_timeout_s)
        self.transport.close()  # a handler waiting on the body gets http.disconnect


def timed_protocol(read_timeout_s: float) -> type[H11Protocol]:
    """``TimedH11Protocol`` with this timeout (uvicorn instantiates the class it is given)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"read_timeout_s": read_timeout_s})


def clip(path: str) -> str:
    if len(path) <= MAX_LOGGED_PATH:
        return path
    return f"{path[:MAX_LOGGED_PATH]}... ({len(path)} characters)"


class ClipPaths(logging.Filter):
    """Clips the path argument of uvicorn's access log line (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and len(args[2]) > MAX_LOGGED_PATH:
            record.args = (*args[:2], clip(args[2]), *args[3:])
        return True


def config(app: Any, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn config ``slimscout serve`` runs: our timeouts, h11 with the read deadline, clipped paths."""
    server_config = uvicorn.Config(app, host=host, port=port, http=timed_protocol(settings.request_read_timeout_s),
                                   timeout_keep_alive=settings.keep_alive_timeout_s, **options)
    access = logging.getLogger(ACCESS_LOGGER)  # configured by uvicorn.Config just now
    if not any(isinstance(existing, ClipPaths) for existing in access.filters):
        access.addFilter(ClipPaths())
    return server_config
