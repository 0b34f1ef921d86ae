"""The dashboard: three HTML pages that poll the JSON API, plotly.js served from the plotly package.

The pages hold no data, so they need no token; the API calls they make do. Each page is its
``<main>`` fragment in ``templates/`` put into the shared ``layout.html`` (head, header, scripts).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from string import Template

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, HTMLResponse

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"
PLOTLY_PATH = "/static/vendor/plotly.min.js"

#: Page fragment → (title, its scripts in load order).
PAGES = {
    "index.html": ("slimscout", ["/static/common.js", "/static/index.js"]),
    "study.html": ("slimscout study", [PLOTLY_PATH, "/static/common.js", "/static/study.js"]),
    "group.html": ("slimscout group", [PLOTLY_PATH, "/static/common.js", "/static/group.js"]),
}

router = APIRouter(include_in_schema=False)


@cache
def _page(name: str) -> str:
    title, scripts = PAGES[name]
    layout = Template((TEMPLATES / "layout.html").read_text(encoding="utf-8"))
    return layout.substitute(title=title, main=(TEMPLATES / name).read_text(encoding="utf-8"),
                             scripts="\n".join(f'<script src="{src}"></script>' for src in scripts))


@cache
def plotly_js() -> Path | None:
    """plotly.min.js from the installed plotly package (found without importing it); works offline."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(_page("index.html"))


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: str) -> HTMLResponse:
    return HTMLResponse(_page("study.html"))


@router.get("/groups/{group_id}", response_class=HTMLResponse)
def group_page(group_id: str) -> HTMLResponse:
    return HTMLResponse(_page("group.html"))


@router.get(PLOTLY_PATH)
def plotly() -> FileResponse:
    path = plotly_js()
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="plotly is not installed")
    return FileResponse(path, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})
