"""The API's window on the Optuna studies that share slimscout's database.

Optuna is imported on first use (a background thread warms it at startup), so the app starts
fast. One storage per process, wrapped in Optuna's own cache of finished trials: a dashboard
poll re-reads only new and unfinished trials, however long the study has run.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from search.trial_digest import IncrementalDigest, TrialDigest

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)


class OptunaStore:
    """Creates studies and reads their trials; safe to share between request threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._storage: BaseStorage | None = None
        self._rdb: RDBStorage | None = None
        self._lock = threading.Lock()
        self._study_ids: dict[str, int] = {}
        self._digests: dict[str, IncrementalDigest] = {}

    @property
    def storage(self) -> BaseStorage:
        if self._storage is None:
            with self._lock:
                if self._storage is None:
                    self._storage = self._open()
        return self._storage

    def _open(self) -> BaseStorage:
        from search import optuna_adapter

        self._rdb = optuna_adapter.open_rdb(self.url, serialize_sqlite=False)  # the API only reads and creates
        return optuna_adapter.cached(self._rdb)

    def warm(self) -> None:
        """Import Optuna and open the storage now rather than on the first request."""
        try:
            self.storage  # noqa: B018
        except Exception:  # the first request will report it
            log.exception("could not open the Optuna storage at startup")

    def close(self) -> None:
        """Close the storage's database connections (app shutdown)."""
        with self._lock:
            if self._rdb is not None:
                self._rdb.engine.dispose()
            self._storage = self._rdb = None
            self._study_ids.clear()
            self._digests.clear()

    def create_study(self, name: str, spec: dict[str, Any]) -> None:
        """Create (or join, if a worker got there first) the study and record its spec."""
        import optuna

        from search.optuna_adapter import SPEC_ATTR

        study = optuna.create_study(storage=self.storage, study_name=name, direction="minimize",
                                    load_if_exists=True)
        if SPEC_ATTR not in study.user_attrs:  # a spec a worker stored first stays
            study.set_user_attr(SPEC_ATTR, spec)

    def _study_id(self, name: str) -> int | None:
        study_id = self._study_ids.get(name)
        if study_id is None:
            try:
                study_id = self.storage.get_study_id_from_name(name)
            except KeyError:
                return None
            self._study_ids[name] = study_id
        return study_id

    def trials(self, name: str) -> list[FrozenTrial]:
        """The study's trials by number (shared, do not modify); [] while the study does not exist.

        Trials a worker marked ``surplus`` (created past ``n_trials`` by a race, failed unmeasured)
        are left out: they were never part of the search.
        """
        study_id = self._study_id(name)
        if study_id is None:
            return []
        try:
            trials = self.storage.get_all_trials(study_id, deepcopy=False)
        except KeyError:  # deleted behind our back
            self._study_ids.pop(name, None)
            return []
        from search.optuna_adapter import live

        return live(trials)

    def digest(self, name: str, trials: list[FrozenTrial]) -> TrialDigest:
        """Counts, best, baselines and timings of ``trials`` (this study's, from ``trials(name)``)."""
        incremental = self._digests.get(name)
        if incremental is None:
            incremental = self._digests.setdefault(name, IncrementalDigest())
        return incremental.update(trials)
