"""slimscout's own tables, next to Optuna's in the same database.

``db`` has the engines, the one session scope and the migrations (``init_db``); ``models`` the
table classes; ``crud`` keyword-only data-access functions that return ``None`` when nothing
is found.
"""

from storage.crud import (
    ALLOWED_TRANSITIONS,
    IllegalTransitionError,
    StudyRunningError,
    add_artifact,
    claim_queued_study,
    count_studies,
    create_study,
    create_study_group,
    delete_study,
    end_setup_lease,
    get_artifact,
    get_study,
    get_study_group,
    hash_token,
    list_artifacts,
    list_studies,
    renew_setup_lease,
    set_status,
    take_over_setup,
    update_summary,
)
from storage.db import (
    VERSION_TABLE,
    dispose_engines,
    get_engine,
    init_db,
    make_engine,
    normalize_url,
    session_scope,
)
from storage.models import Artifact, Base, Study, StudyGroup, StudyStatus

__all__ = [
    "ALLOWED_TRANSITIONS",
    "VERSION_TABLE",
    "Artifact",
    "Base",
    "IllegalTransitionError",
    "Study",
    "StudyGroup",
    "StudyRunningError",
    "StudyStatus",
    "add_artifact",
    "claim_queued_study",
    "count_studies",
    "create_study",
    "create_study_group",
    "delete_study",
    "dispose_engines",
    "end_setup_lease",
    "get_artifact",
    "get_engine",
    "get_study",
    "get_study_group",
    "hash_token",
    "init_db",
    "list_artifacts",
    "list_studies",
    "make_engine",
    "normalize_url",
    "renew_setup_lease",
    "session_scope",
    "set_status",
    "take_over_setup",
    "update_summary",
]
