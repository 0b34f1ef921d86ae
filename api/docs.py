"""``/docs``: Swagger UI served from the ``fastapi-offline`` package's copy of it, so the API's docs work offline.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN and starts it with an inline script, which
the Content-Security-Policy (``api.security``) forbids; this page loads both from this server.
Only the package's files are used (Swagger UI 5, which reads OpenAPI 3.1; ``swagger-ui-bundle``
ships 4.x, which cannot). ReDoc, whose bundle needs more than this CSP allows, is not served.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>slimscout API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def docs() -> HTMLResponse:
    return HTMLResponse(PAGE)


def swagger_ui_dir() -> Path:
    """The installed ``fastapi_offline/static`` (found without importing the package)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline is not installed: pip install fastapi-offline (Swagger UI for /docs)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install(app: FastAPI) -> None:
    """The page and its assets; build the app with ``docs_url=None, redoc_url=None``."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_dir()), name="swagger-ui")
