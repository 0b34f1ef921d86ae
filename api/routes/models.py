"""``/v1/models``: what a study may compress."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AUTH_RESPONSES, OwnerDep, SettingsDep
from api.schemas import CatalogModel, LocalModel, ModelsPublic
from compress.catalog_entries import CATALOG
from compress.registry import OPERATOR_NAMES
from search.spec import GRANULARITIES
from search.strategy_registry import STRATEGY_NAMES

router = APIRouter(prefix="/v1", tags=["models"], responses=AUTH_RESPONSES)

MAX_LOCAL = 200


@router.get("/models", response_model=ModelsPublic)
def models(settings: SettingsDep, _owner: OwnerDep) -> ModelsPublic:
    """Catalog models, the configured model roots, and the model directories found directly inside them."""
    local: list[LocalModel] = []
    for root in settings.model_roots:
        base = root.expanduser().resolve()
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if len(local) < MAX_LOCAL and child.is_dir() and (child / "config.json").is_file():
                local.append(LocalModel(model_id=str(child.resolve()), root=str(base)))
    return ModelsPublic(
        catalog=[CatalogModel(model_id=entry.model_id, kind=entry.kind, description=entry.description)
                 for entry in CATALOG.values()],
        model_roots=[str(root) for root in settings.model_roots], local=local,
        operators=list(OPERATOR_NAMES), granularities=list(GRANULARITIES),
        strategies=list(STRATEGY_NAMES))
