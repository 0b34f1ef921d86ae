"""Refused requests (4xx): each logged as a warning naming method, path and reason, never headers or tokens.

Validation errors go back as pydantic reports them (``loc``, ``msg``, ``type``) but without the
offending ``input``: echoing it would send back up to a request's worth of hostile text, and some
values (a lone surrogate, NaN) no JSON response can carry at all.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MAX_LOGGED = 300


def log_refusal(method: str, path: str, status_code: int, reason: str) -> None:
    """One warning line; ``%r`` keeps newlines and control characters in a hostile path from forging log lines."""
    log.warning("refused %s %r: %d %r", method, path[:MAX_LOGGED], status_code, reason[:MAX_LOGGED])


def public_errors(errors: Any) -> list[dict[str, Any]]:
    public = []
    for error in errors:
        msg = str(error.get("msg", ""))
        context = error.get("ctx") or {}
        if error.get("type") == "json_invalid" and "error" in context:
            msg = f"{msg}: {context['error']}"
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        public.append({"loc": loc, "msg": msg, "type": str(error.get("type", ""))})
    return public


def reason_of(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(".".join(str(part) for part in error.get("loc", ())) + f": {error.get('msg', '')}"
                         for error in detail if isinstance(error, dict))
    return str(detail)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = public_errors(exc.errors())
    log_refusal(request.method, request.url.path, status.HTTP_422_UNPROCESSABLE_CONTENT, reason_of(errors))
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if 400 <= exc.status_code < 500:
        log_refusal(request.method, request.url.path, exc.status_code, reason_of(exc.detail))
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
