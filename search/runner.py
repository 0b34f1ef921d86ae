"""Run a whole study from one command: seed with baselines, measure with K workers, claim on holdout."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.progress import StepProgress
from common.settings import get_settings
from compress.config import CompressionConfig, config_from_dict
from search import worker_process
from search.context import Workbench
from search.optuna_adapter import SUMMARY_ATTR
from search.optuna_adapter import storage_url as normalize_url
from search.recover_winner import recover_winner
from search.setup import finalize, seed_study
from search.spec import StudySpec
from search.strategy_registry import Proposer
from search.study import best_trial, counts, create_study, load_study
from search.worker import work_on_study

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a progress display needs after each trial."""

    finished: int
    total: int
    best: float | None
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        return None if self.finished == 0 else self.elapsed_s / self.finished * (self.total - self.finished)


def worker_command(url: str, name: str, index: int) -> list[str]:
    """A worker process on the study ``name`` (a Python process of its own, not the CLI)."""
    return worker_process.command(url, name, index)


def run_search(
    spec: StudySpec,
    *,
    storage_url: str,
    study_name: str,
    workers: int = 0,
    bench: Workbench | None = None,
    guide: Proposer | None = None,
    on_status: Callable[[str], None] | None = None,
    on_setup: StepProgress | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    recover_out: Path | None = None,
    on_recovery: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the study ``spec`` asks for; its summary. With ``spec.recover_steps`` the winner is then
    recovered into ``recover_out`` (default: the cache's ``artifacts/<study_name>/recovered``), which
    resumes a recovery a killed run left there; ``on_recovery`` sees its progress. ``on_setup`` hears the
    setup's steps (``search.setup.seed_study``)."""
    started = time.perf_counter()
    url = normalize_url(storage_url)
    bench = bench or Workbench()
    study = create_study(url, study_name, spec)
    seed_study(study, spec, bench, on_setup)
    if on_status:
        on_status("searching")

    def report(*_: object) -> None:
        if on_progress:
            best = best_trial(study)
            on_progress(
                Progress(
                    counts(study).finished,
                    spec.n_trials,
                    None if best is None else best.value,
                    time.perf_counter() - started,
                )
            )

    if workers == 0:
        work_on_study(url, study_name, bench, on_trial=report, guide=guide)
    else:
        _run_subprocess_workers(url, study_name, workers, report)
    if on_status:
        on_status("re-measuring on holdout")
    summary = finalize(study, spec, bench)
    study.set_user_attr(SUMMARY_ATTR, summary)  # a CLI study has no row: its summary is kept with the study
    best = best_trial(study)
    summary["n_trials"] = spec.n_trials
    summary["study"] = study_name
    summary["best_config"] = best.user_attrs["config"] if best else None
    if best is not None and spec.recover_steps is not None:
        if on_status:
            budget = f", at most {spec.recover_minutes:g} minutes" if spec.recover_minutes else ""
            on_status(f"recovering the winner ({spec.recover_steps} steps{budget})")
        out = recover_out or get_settings().cache_dir / "artifacts" / study_name / "recovered"
        summary["recovery"] = recover_winner(spec, bench, config_from_dict(best.user_attrs["config"]), out,
                                             holdout_before=summary["holdout"].get("best"),
                                             on_progress=on_recovery or (lambda _: None))
        summary["recovery"]["out"] = str(out)
        study.set_user_attr(SUMMARY_ATTR, {k: v for k, v in summary.items() if k != "best_config"})
    summary["seconds"] = time.perf_counter() - started
    return summary


def _run_subprocess_workers(url: str, name: str, workers: int, report: Callable[[], None]) -> None:
    procs = [subprocess.Popen(worker_command(url, name, i)) for i in range(workers)]
    study, _ = load_study(url, name)
    try:
        last = -1
        while any(p.poll() is None for p in procs):
            finished = counts(study).finished
            if finished != last:
                report()
                last = finished
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=60)
    failed = [p.returncode for p in procs if p.returncode not in (0, None)]
    if failed:
        log.warning("workers exited with %s", failed)


def best_config(summary: dict[str, Any]) -> CompressionConfig | None:
    raw = summary.get("best_config")
    return config_from_dict(raw) if raw else None
