"""Build the FastAPI app: ``create_app()`` (uvicorn: ``uvicorn --factory api.main:create_app``).

Routes live under ``/v1`` (clear of optuna-dashboard's paths), plus ``/healthz`` and the
dashboard at ``/``, ``/studies/{id}`` and ``/groups/{id}``. Startup migrates the database (``storage.init_db``)
and warms Optuna in the background; torch is never imported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import docs
from api.limits import BodyLimitMiddleware
from api.optuna_store import OptunaStore
from api.refusals import install as install_refusals
from api.routes import dashboard, groups, health, models, studies
from api.security import SecurityMiddleware
from api.unavailable import DatabaseUnavailableMiddleware
from common import __version__
from common.settings import Settings, get_settings
from storage import init_db

log = logging.getLogger(__name__)
WARM_DELAY_S = 0.5


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        init_db(settings.storage_url)
        # Import Optuna once the server is up, not while it starts (the first poll then finds it ready).
        warm = threading.Timer(WARM_DELAY_S, app.state.optuna.warm)
        warm.daemon = True
        warm.start()
        yield
        warm.cancel()
        app.state.optuna.close()

    app = FastAPI(title="slimscout", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  summary="Search per-layer compression configs for language models under a budget.")
    app.state.settings = settings
    app.state.optuna = OptunaStore(settings.storage_url)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(DatabaseUnavailableMiddleware)  # a database outage is a 503 with Retry-After
    app.add_middleware(SecurityMiddleware)  # outermost: its headers go on every response, refusals included
    install_refusals(app)
    for router in (health.router, models.router, studies.router, groups.router, dashboard.router):
        app.include_router(router)
    docs.install(app)  # offline Swagger UI at /docs
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    return app
