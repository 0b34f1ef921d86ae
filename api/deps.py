"""Dependencies the routes declare: settings, a database session, the caller's identity, Optuna."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from api.optuna_store import OptunaStore
from api.schemas import Message
from common.settings import Settings
from storage import get_engine, hash_token, session_scope

_bearer = HTTPBearer(auto_error=False, description="one of the tokens in SLIMSCOUT_API_TOKEN, when it is set")


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(get_engine(settings.storage_url)) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_optuna(request: Request) -> OptunaStore:
    store: OptunaStore = request.app.state.optuna
    return store


OptunaDep = Annotated[OptunaStore, Depends(get_optuna)]


def api_tokens(settings: Settings) -> list[str]:
    """The configured tokens ("a,b,c" is one token per user); empty means auth is off."""
    return [token.strip() for token in (settings.api_token or "").split(",") if token.strip()]


def authenticate(settings: Settings, offered: str | None) -> str | None:
    """The owner hash of bearer token ``offered``; None when auth is off; 401 when it is on and this is no token.

    Routes get it through ``OwnerDep``; ``api.jsonbody`` calls it before reading a body, so an
    anonymous caller learns nothing from how their body would have been parsed.
    """
    tokens = api_tokens(settings)
    if not tokens:
        return None
    offered = offered or ""
    # Compare against every token, so the time taken does not tell which prefix matched.
    matches = [hmac.compare_digest(offered.encode(), token.encode()) for token in tokens]
    if not offered or not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return hash_token(offered)


def get_owner(settings: SettingsDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str | None:
    """The caller's owner hash (stored on the studies they create); None when auth is off.

    With tokens configured, a request without one of them is refused with 401.
    """
    return authenticate(settings, credentials.credentials if credentials is not None else None)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as ``HTTPBearer`` reads it."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    return token if scheme.lower() == "bearer" and token else None


OwnerDep = Annotated[str | None, Depends(get_owner)]
# For the routers of routes that declare OwnerDep, so the schema documents the 401.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or invalid bearer token (when SLIMSCOUT_API_TOKEN is set)"}}
