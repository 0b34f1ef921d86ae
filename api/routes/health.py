"""``/healthz``: is the database reachable (no auth: load balancers and compose ask it)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SettingsDep
from api.schemas import Health
from storage import get_engine

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(settings: SettingsDep) -> Health | JSONResponse:
    try:
        with get_engine(settings.storage_url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("health check: database unreachable: %s", exc)
        return JSONResponse(Health(status="error", database=type(exc).__name__).model_dump(), status_code=503)
    return Health(status="ok", database="ok")
