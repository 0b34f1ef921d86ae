"""Browser-facing defences, as one pure ASGI middleware: security headers, same-origin writes, relative redirects.

- Every response (API, dashboard pages, static files, errors) carries a Content-Security-Policy
  that allows scripts only from this server (the pages hold no inline script), plus
  ``X-Content-Type-Options``, ``X-Frame-Options`` and ``Referrer-Policy``. The dashboard keeps the
  API token in localStorage: an injected or framed script is what these headers keep out.
- A state-changing request (POST, PUT, PATCH, DELETE) that names an ``Origin`` other than the host
  it was sent to is refused with 403. With auth off (the quick start) a page on another site could
  otherwise submit a form to the API in the user's browser; browsers always send ``Origin`` on such
  requests. The content-type half of the defence (JSON only, 415) is ``api.jsonbody``'s.
- A ``Location`` header is made relative: redirects (a trailing slash removed, say) never echo the
  ``Host`` header a client chose, so a poisoned Host cannot send anyone elsewhere.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.refusals import log_refusal

#: Styles may be inline: Plotly and Swagger UI set them; scripts may not.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``Origin`` names the host (and port) the request was sent to; ``null`` never does."""
    if not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.lower()


def relative(location: str) -> str:
    """``http://any-host/path?q`` → ``/path?q``: our redirects stay on the server they came from."""
    parts = urlsplit(location)
    if not parts.scheme and not parts.netloc:
        return location
    path = "/" + parts.path.lstrip("/")  # never "//host": that is absolute again
    return path + (f"?{parts.query}" if parts.query else "")


class SecurityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, headers.get("host")):
                await self._refuse(scope, receive, send, f"cross-origin request from {origin[:100]!r} refused")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if "location" in headers:
                    headers["location"] = relative(headers["location"])
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        log_refusal(scope["method"], scope.get("path", ""), 403, reason)
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
