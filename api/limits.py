"""Refuse request bodies over ``Settings.max_request_bytes`` with 413, declared or streamed."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.refusals import log_refusal


class BodyLimitMiddleware:
    """Pure ASGI: checks Content-Length up front, and counts chunked bodies as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False  # the server rejects malformed lengths itself
            if too_big:
                await self._refuse(scope, send)
                return
        elif b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        # Read the (small) body now, so nothing downstream ever sees more than the limit.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        reason = f"request body exceeds {self.max_bytes} bytes"
        log_refusal(scope.get("method", ""), scope.get("path", ""), 413, reason)
        body = json.dumps({"detail": reason}).encode()
        headers: list[tuple[bytes, Any]] = [(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode()),
                                             (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
