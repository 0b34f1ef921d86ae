"""Request bodies are strict JSON: a route class that refuses, with a 4xx naming the problem, what Python lets by.

Python's ``json`` accepts ``NaN`` and ``Infinity``, reads ``1e400`` as infinity, raises a bare
ValueError on integers of more than 4,300 digits and recurses once per nesting level; strings may
hold lone surrogates that no UTF-8 response can carry. Left to FastAPI these become a 500 (when
the value is echoed back) or a 400 that says only "There was an error parsing the body". Python's
``json`` also keeps the last of two equal keys (``{"budget": 0.1, "budget": 0.9}``), where other
parsers keep the first: such a body means two things, so it is refused (422).

The route class also sets the order of the checks: the bearer token first (an anonymous caller
gets 401 whatever their body), then the content type of a state-changing request (only JSON, or
no body at all: 415, the other half of the CSRF defence in ``api.security``), then the body. A
client that hangs up mid-body is logged in one line.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from api.deps import authenticate, bearer_token, get_owner
from api.security import UNSAFE_METHODS

log = logging.getLogger(__name__)

MAX_DEPTH = 32
MAX_INT_DIGITS = 100


class BodyError(ValueError):
    """A body that parses as Python's JSON but not as ours."""


def _constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise BodyError(f"duplicate key {key[:40]!r} in a JSON object")
        value[key] = item
    return value


def _check_tree(value: Any) -> None:
    """Depth at most MAX_DEPTH, strings encodable as UTF-8 (no lone surrogates); iterative, any size."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BodyError(f"a string holds a lone surrogate ({item[:40]!a})") from None
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise BodyError(f"JSON nests deeper than {MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse_json(body: bytes) -> Any:
    """The body as JSON; raises BodyError naming the problem, or json.JSONDecodeError for bad syntax."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float,
                           parse_int=_int)
    except RecursionError:
        raise BodyError(f"JSON nests deeper than {MAX_DEPTH} levels") from None
    _check_tree(value)
    return value


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except BodyError as exc:
                # The shape of a validation error, so clients read one 422 format.
                detail = [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail) from None
        return self._json


def _needs_owner(dependant: Dependant) -> bool:
    return any(dep.call is get_owner or _needs_owner(dep) for dep in dependant.dependencies)


class StrictJSONRoute(APIRoute):
    """Routes of a router built with ``APIRouter(route_class=StrictJSONRoute)`` parse bodies strictly."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guarded = _needs_owner(self.dependant)

        async def strict(request: Request) -> Response:
            request = StrictJSONRequest(request.scope, request.receive)
            if guarded:
                authenticate(request.app.state.settings, bearer_token(request))
            if request.method in UNSAFE_METHODS:
                content_type = request.headers.get("content-type")
                if content_type is not None and not is_json(content_type):
                    raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                        detail=f"expected Content-Type: application/json, got {content_type}")
                try:
                    body = await request.body()
                except ClientDisconnect:
                    log.warning("%s %r: the client disconnected mid-body", request.method, request.url.path[:200])
                    return Response(status_code=400)  # nobody is left to read it
                if body and content_type is None:
                    raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                        detail="expected Content-Type: application/json, got none")
            return await handler(request)

        return strict
