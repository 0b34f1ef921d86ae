"""A worker for the service: serves every open study in the storage, loading each model on demand.

Queued studies are claimed atomically (one worker sets each up: baselines, seed trials); running
studies are joined by any worker with time to spare. The worker that sees a study's last trial
finish re-measures on holdout, stores the summary and the winning config, and completes it.

Nothing is lost to a worker that dies: the setup is held under a lease the worker renews (another
worker takes over a lease that ran out and sets the study up again, idempotently), trials under
heartbeats (``search.liveness``). A database outage makes the worker back off and carry on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import optuna

from common.errors import SlimscoutError
from common.progress import ThrottledRecord
from common.settings import get_settings
from search.context import Workbench
from search.liveness import BackgroundThread, Reaper, grace_period_s
from search.measure_trial import worker_id
from search.optuna_adapter import SETUP_PROGRESS_ATTR
from search.recover_winner import RecoveryLock, recover_winner
from search.setup import finalize, seed_study, summarize
from search.spec import StudySpec
from search.study import best_trial, counts, create_study, is_set_up, load_study
from search.worker import work_on_study
from storage import (
    add_artifact,
    claim_queued_study,
    end_setup_lease,
    get_engine,
    get_study,
    init_db,
    list_studies,
    renew_setup_lease,
    session_scope,
    set_status,
    take_over_setup,
    update_summary,
)
from storage.crud import IllegalTransitionError
from storage.models import Study, StudyStatus
from storage.retry import Backoff, describe, retry_db

log = logging.getLogger(__name__)
SETUP_PROGRESS_INTERVAL_S = 1.0  # the setup's progress is written at most this often within a step


class RecoveryCancelled(Exception):
    """The study was cancelled while its winner was being recovered."""


def spec_of(row: Study) -> StudySpec:
    """The spec the study's row stores."""
    return StudySpec.from_dict(row.spec)


class SetupLease(BackgroundThread):
    """Renews this worker's setup lease on a study every heartbeat interval while the block runs.

    The lease is ended (set to NULL) only when the block succeeds; after an error it runs out, and
    a worker (maybe this one) sets the study up again.
    """

    def __init__(self, worker: ServiceWorker, study_id: str) -> None:
        super().__init__(f"lease-{study_id}")
        self.worker = worker
        self.study_id = study_id

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if exc[0] is None:
            with session_scope(self.worker.engine) as session:
                end_setup_lease(session, study_id=self.study_id, owner=self.worker.owner)

    def _run(self) -> None:
        while not self._stop.wait(self.worker.interval_s):
            try:
                with session_scope(self.worker.engine) as session:
                    mine = renew_setup_lease(session, study_id=self.study_id, owner=self.worker.owner,
                                             lease_s=self.worker.lease_s)
            except Exception as exc:
                log.warning("setup lease of study %s not renewed (%s); retrying", self.study_id, describe(exc))
                continue
            if not mine:
                log.warning("study %s: the setup lease went to another worker (or the study ended)", self.study_id)
                return


class ServiceWorker:
    def __init__(self, url: str, bench: Workbench, stop: threading.Event) -> None:
        self.url = url
        self.bench = bench
        self.stop = stop
        retry_db(lambda: init_db(url), what="migrating the database")
        self.engine = get_engine(url)
        self.owner = worker_id()
        self.interval_s = float(get_settings().heartbeat_interval_s)
        self.lease_s = float(grace_period_s(get_settings().heartbeat_interval_s))
        self._reapers: dict[str, Reaper] = {}

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
        """Create the Optuna study (if the API did not), then seed it with the baselines, recording how far it is."""
        spec = spec_of(row)
        study = create_study(self.url, row.optuna_study_name, spec)
        progress = self.setup_record(row, study, spec)
        seed_study(study, spec, self.bench, progress)
        progress.finish()

    def setup_record(self, row: Study, study: optuna.Study, spec: StudySpec) -> ThrottledRecord:
        """The setup's progress record: kept with the Optuna study (so every later summary carries it) and
        published in the study's summary as ``setup``, at most once a second within a step."""

        def write(record: dict[str, Any]) -> None:
            study.set_user_attr(SETUP_PROGRESS_ATTR, record)
            self.publish(row, summarize(study, spec))

        return ThrottledRecord(write, interval_s=SETUP_PROGRESS_INTERVAL_S)

    def work(self, row: Study) -> None:
        study, spec = load_study(self.url, row.optuna_study_name)

        def on_trial(*_: object) -> None:
            self.publish(row, summarize(study, spec))

        def cancelled() -> bool:
            return self.status(row.id) is not StudyStatus.RUNNING

        work_on_study(
            self.url,
            row.optuna_study_name,
            self.bench,
            stop=self.stop,
            on_trial=on_trial,
            should_stop=cancelled,
        )
        now = counts(study)
        if now.finished >= spec.n_trials and now.running == 0 and self.status(row.id) is StudyStatus.RUNNING:
            self.complete(row, study, spec)

    def complete(self, row: Study, study: Any, spec: StudySpec) -> bool:
        """Claim on holdout, store the winner (and its export), recover it if asked, complete the study.

        False when another worker is recovering the study's winner (it completes the study). The
        results are committed before a recovery starts: a worker killed during one leaves the study
        running with its winner, holdout numbers and downloads in place, and the next worker to
        complete it resumes the recovery from its last checkpoint.
        """
        lock = RecoveryLock(self.artifacts(row) / "recover.lock") if spec.recover_steps is not None else None
        with lock or contextlib.nullcontext():
            if lock is not None and not lock.acquired:
                return False
            summary = finalize(study, spec, self.bench)
            best = best_trial(study)
            with session_scope(self.engine) as session:
                update_summary(session, study_id=row.id, summary=summary)
                if best is not None:
                    path = self.artifacts(row) / "best-config.json"
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
                    if spec.export_format is not None:
                        self.export_checkpoint(session, row, spec, spec.export_format, best.user_attrs["config"],
                                               summary)
            if (best is not None and spec.recover_steps is not None
                    and not self.recover(row, spec, best.user_attrs["config"], summary)):
                return True  # cancelled meanwhile
            with session_scope(self.engine) as session, contextlib.suppress(IllegalTransitionError):
                set_status(session, study_id=row.id, status=StudyStatus.COMPLETED)  # unless cancelled meanwhile
        return True

    def artifacts(self, row: Study) -> Path:
        path = get_settings().cache_dir / "artifacts" / row.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def recover(self, row: Study, spec: StudySpec, config_doc: dict[str, Any], summary: dict[str, Any]) -> bool:
        """Recover the winner (``search.recover_winner``), publishing progress into the summary's ``recovery``;
        the recovered model becomes the study's ``recovered-checkpoint`` artifact. False if the study was
        cancelled meanwhile (the recovery stops at its next step); a recovery that fails on the config or
        the data is recorded as failed, and the study completes with its search result."""
        from compress.config import config_from_dict
        from compress.export import MANIFEST_NAME
        from compress.weight_files import files_bytes

        def on_progress(record: dict[str, Any]) -> None:
            if self.status(row.id) is not StudyStatus.RUNNING:
                raise RecoveryCancelled
            self.publish(row, {**summary, "recovery": record})

        out = self.artifacts(row) / "recovered"
        before = summary.get("holdout", {}).get("best")
        try:
            summary["recovery"] = recover_winner(spec, self.bench, config_from_dict(config_doc), out,
                                                 holdout_before=before, on_progress=on_progress)
        except RecoveryCancelled:
            log.info("study %s: cancelled during the recovery of its winner", row.id)
            return False
        except (SlimscoutError, ValueError) as exc:
            log.error("study %s: recovering the winner failed: %s", row.id, exc)
            summary["recovery"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                                   "holdout_before": before}
            self.publish(row, summary)
            return True
        with session_scope(self.engine) as session:
            update_summary(session, study_id=row.id, summary=summary)
            manifest = (out / MANIFEST_NAME).read_bytes()
            add_artifact(session, study_id=row.id, kind="recovered-checkpoint", path=str(out),
                         size_bytes=files_bytes(out), sha256=hashlib.sha256(manifest).hexdigest())
        return True

    def export_checkpoint(self, session: Any, row: Study, spec: StudySpec, export_format: str,
                          config_doc: dict[str, Any], summary: dict[str, Any]) -> None:
        """The winner's checkpoint in the spec's format, with its model card, as the study's artifact."""
        from compress.config import config_from_dict
        from compress.export import MANIFEST_NAME, export_compressed
        from compress.model_card import CardMeasurement

        holdout = summary.get("holdout", {})
        best_ppl, dense_ppl = holdout.get("best", {}).get("ppl"), holdout.get("dense", {}).get("ppl")
        measurement = (CardMeasurement(spec.dataset, "holdout", int(holdout["tokens"]), best_ppl, dense_ppl)
                       if best_ppl is not None and dense_ppl is not None else None)
        out = self.artifacts(row) / "checkpoint"
        result = export_compressed(self.bench.session(spec.model_id), config_from_dict(config_doc), out,
                                   force=True, merge=export_format == "compressed-tensors",
                                   export_format=export_format, measurement=measurement,
                                   command=f"POST /v1/studies {json.dumps(spec.to_dict(), sort_keys=True)}")
        manifest = (out / MANIFEST_NAME).read_bytes()  # names every file's role; changes with every export
        add_artifact(session, study_id=row.id, kind="checkpoint", path=str(out), size_bytes=result.file_bytes,
                     sha256=hashlib.sha256(manifest).hexdigest())

    def reap(self, study: optuna.Study) -> None:
        """Fail and re-queue the study's trials whose workers died (a study no worker is in gets no reaper)."""
        reaper = self._reapers.get(study.study_name)
        if reaper is None:
            reaper = self._reapers[study.study_name] = Reaper(study)
        reaper.reap()

    def claim(self) -> Study | None:
        """A queued study, or a running one whose setup lost its worker; now ours to set up."""
        with session_scope(self.engine) as session:
            claimed = claim_queued_study(session, owner=self.owner, lease_s=self.lease_s)
            if claimed is None:
                claimed = take_over_setup(session, owner=self.owner, lease_s=self.lease_s)
                if claimed is not None:
                    log.warning("study %s: its setup lost its worker; setting it up again", claimed.id)
            return claimed

    def step(self) -> bool:
        """Do one unit of work; False when there was nothing to do."""
        claimed = self.claim()
        if claimed is not None:
            try:
                with SetupLease(self, claimed.id):
                    self.setup(claimed)
            except (SlimscoutError, ValueError, OSError) as exc:
                self.fail(claimed.id, f"{type(exc).__name__}: {exc}")
            return True
        with session_scope(self.engine) as session:
            running = list_studies(session, status=StudyStatus.RUNNING, limit=100)
        for row in sorted(running, key=lambda r: r.created_at):
            try:
                study, spec = load_study(self.url, row.optuna_study_name)
            except KeyError:
                continue  # no Optuna study yet: its setup creates it (or, if that worker died, the next one)
            if not is_set_up(study):
                continue  # its claimer is still building the baselines (or its lease runs out: see claim)
            self.reap(study)
            now = counts(study)
            if now.finished >= spec.n_trials and now.running == 0:
                if self.complete(row, study, spec):
                    return True
                continue  # another worker is recovering its winner
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
    backoff = Backoff()
    while not stop.is_set():
        try:
            busy = worker.step()
        except Exception as exc:
            backoff.wait_out(exc, stop)
            continue
        backoff.reset()
        if not busy:
            if once:
                return
            stop.wait(poll_s)
