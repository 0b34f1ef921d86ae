"""A worker for the service: serves every open study in the storage, loading each model on demand.

Queued studies are claimed atomically (one worker sets each up: baselines, seed trials); running
studies are joined by any worker with time to spare. The worker that sees a study's last trial
finish re-measures on holdout, stores the summary and the winning config, and completes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from typing import Any

from search.context import Workbench
from search.guided import make_guide
from search.setup import finalize, seed_study, summarize
from search.spec import StudySpec
from search.study import best_trial, counts, create_study, load_study
from search.worker import work_on_study
from slimscout.errors import SlimscoutError
from slimscout.settings import get_settings
from storage import (
    add_artifact,
    claim_queued_study,
    get_engine,
    get_study,
    init_db,
    list_studies,
    session_scope,
    set_status,
    update_summary,
)
from storage.crud import IllegalTransitionError
from storage.models import Study, StudyStatus

log = logging.getLogger(__name__)


def spec_of(row: Study) -> StudySpec:
    return StudySpec(
        model_id=row.model_id,
        budget=row.budget,
        operators=list(row.operators),
        granularity=row.granularity,
        n_trials=row.n_trials,
        eval_tokens=row.eval_tokens,
        objective=row.objective,
        dataset=row.dataset,
        split=row.split,
        seed=row.seed,
    )


class ServiceWorker:
    def __init__(self, url: str, bench: Workbench, stop: threading.Event) -> None:
        self.url = url
        self.bench = bench
        self.stop = stop
        init_db(url)
        self.engine = get_engine(url)

    def status(self, study_id: str) -> StudyStatus | None:
        with session_scope(self.engine) as session:
            row = get_study(session, study_id=study_id)
            return None if row is None else row.status

    def fail(self, study_id: str, error: str) -> None:
        log.error("study %s failed: %s", study_id, error)
        with session_scope(self.engine) as session, contextlib.suppress(IllegalTransitionError):
            set_status(session, study_id=study_id, status=StudyStatus.FAILED, error=error[:2000])

    def publish(self, row: Study, summary: dict[str, Any]) -> None:
        with session_scope(self.engine) as session:
            update_summary(session, study_id=row.id, summary=summary)

    def setup(self, row: Study) -> None:
        """Create the Optuna study (if the API did not), then seed it with the baselines."""
        spec = spec_of(row)
        study = create_study(self.url, row.optuna_study_name, spec)
        seed_study(study, spec, self.bench)
        self.publish(row, summarize(study, spec))

    def work(self, row: Study) -> None:
        study, spec = load_study(self.url, row.optuna_study_name)
        guide = make_guide() if spec.strategy == "guided" else None

        def on_trial(*_: object) -> None:
            self.publish(row, summarize(study, spec))

        def cancelled() -> bool:
            return self.status(row.id) is not StudyStatus.RUNNING

        work_on_study(
            self.url,
            row.optuna_study_name,
            self.bench,
            stop=self.stop,
            guide=guide,
            on_trial=on_trial,
            should_stop=cancelled,
        )
        now = counts(study)
        if now.finished >= spec.n_trials and now.running == 0 and self.status(row.id) is StudyStatus.RUNNING:
            self.complete(row, study, spec)

    def complete(self, row: Study, study: Any, spec: StudySpec) -> None:
        summary = finalize(study, spec, self.bench)
        best = best_trial(study)
        with session_scope(self.engine) as session:
            update_summary(session, study_id=row.id, summary=summary)
            if best is not None:
                path = get_settings().cache_dir / "artifacts" / row.id / "best-config.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                data = json.dumps(best.user_attrs["config"], indent=2).encode()
                path.write_bytes(data)
                add_artifact(
                    session,
                    study_id=row.id,
                    kind="config",
                    path=str(path),
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            with contextlib.suppress(IllegalTransitionError):  # completed elsewhere, or cancelled, meanwhile
                set_status(session, study_id=row.id, status=StudyStatus.COMPLETED)

    def step(self) -> bool:
        """Do one unit of work; False when there was nothing to do."""
        with session_scope(self.engine) as session:
            claimed = claim_queued_study(session)
        if claimed is not None:
            try:
                self.setup(claimed)
            except (SlimscoutError, ValueError, OSError) as exc:
                self.fail(claimed.id, f"{type(exc).__name__}: {exc}")
            return True
        with session_scope(self.engine) as session:
            running = list_studies(session, status=StudyStatus.RUNNING, limit=100)
        for row in sorted(running, key=lambda r: r.created_at):
            study, spec = load_study(self.url, row.optuna_study_name)
            if not study.user_attrs.get("setup_done"):
                continue  # its claimer is still building the baselines
            now = counts(study)
            if now.finished >= spec.n_trials and now.running == 0:
                self.complete(row, study, spec)
                return True
            if now.finished + now.running < spec.n_trials or now.waiting:
                try:
                    self.work(row)
                except (SlimscoutError, ValueError) as exc:
                    self.fail(row.id, f"{type(exc).__name__}: {exc}")
                return True
        return False


def serve_studies(
    url: str, bench: Workbench, *, stop: threading.Event, once: bool = False, poll_s: float = 2.0
) -> None:
    worker = ServiceWorker(url, bench, stop)
    while not stop.is_set():
        if not worker.step():
            if once:
                return
            stop.wait(poll_s)
