"""503 with ``Retry-After`` for a request that failed because the database was unreachable, not a 500.

A dropped or refused connection is a moment's outage, not a bug: the client should come back
shortly, and the next request after the outage gets a fresh connection (the engines ping pooled
connections before use). Whether an error is such an outage is ``storage.retry.is_transient``'s call;
Optuna's wrapped errors count too. Anything else still goes on to the server's 500.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.retry import describe, is_transient

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


class DatabaseUnavailableMiddleware:
    """Turns a transient database error into a 503 (or a warning, if the response had already gone)."""

    def __init__(self, app: ASGIApp, retry_after_s: int = RETRY_AFTER_S) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if started:
                # The session's closing commit runs after the response is sent; routes that write
                # commit before answering, so this was a read's commit and nothing was lost.
                log.warning("%s %r: database unavailable after the response (%s)", scope.get("method"),
                            scope.get("path"), describe(exc))
                return
            log.warning("%s %r: database unavailable (%s); 503", scope.get("method"), scope.get("path"),
                        describe(exc))
            response = JSONResponse({"detail": "the database is unavailable; retry shortly"}, status_code=503,
                                    headers={"Retry-After": str(self.retry_after_s)})
            await response(scope, receive, send)
