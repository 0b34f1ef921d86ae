"""The setup's progress: the throttled record, and the steps a real setup reports, in real counts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from common.progress import ThrottledRecord
from compress.baselines import sensitivity_levels
from search.context import Workbench
from search.optuna_adapter import SETUP_PROGRESS_ATTR
from search.setup import seed_study, summarize
from search.spec import StudySpec
from search.study import create_study
from tests.search._studies import SPEC, sqlite_url


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_writes_at_most_once_a_second_within_a_step_a_new_step_at_once_and_the_final_state() -> None:
    clock, written = Clock(), []
    record = ThrottledRecord(written.append, interval_s=1.0, clock=clock)
    record("calibration statistics", 0, 30)
    for done in range(1, 31):  # a block every 0.25 s
        clock.now += 0.25
        record("calibration statistics", done, 30)
    assert [(r["step"], r["done"]) for r in written] == [("calibration statistics", d) for d in (0, 4, 8, 12, 16,
                                                                                                 20, 24, 28)]
    clock.now += 0.1
    record("sensitivity scan", 0, 120)  # a new step: written at once, though the last write was 0.35 s ago
    assert written[-1] == {"step": "sensitivity scan", "done": 0, "total": 120, "seconds": pytest.approx(7.6),
                           "finished": False}
    clock.now += 0.5
    record("sensitivity scan", 1, 120)  # throttled
    assert written[-1]["done"] == 0
    clock.now += 0.2
    record.finish()  # whatever the throttle says
    assert written[-1] == {"step": "sensitivity scan", "done": 1, "total": 120, "seconds": pytest.approx(8.3),
                           "finished": True}
    assert record.writes == len(written) == 10


def test_a_failed_write_is_logged_and_retried_by_the_next_report_but_a_failed_finish_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, written, failing = Clock(), [], [True]

    def write(record: dict[str, Any]) -> None:
        if failing[0]:
            raise ConnectionError("database gone")
        written.append(record)

    record = ThrottledRecord(write, clock=clock)
    with caplog.at_level(logging.WARNING):
        record("sensitivity scan", 0, 10)
    assert "database gone" in caplog.text and written == []
    failing[0] = False
    clock.now += 0.1  # within the interval, and the same step: still due, as nothing was written
    record("sensitivity scan", 1, 10)
    assert [r["done"] for r in written] == [1]
    failing[0] = True
    with pytest.raises(ConnectionError):
        record.finish()


def test_counts_must_be_counts() -> None:
    record = ThrottledRecord(lambda _: None)
    for done, total in ((3, 2), (-1, 2), (0, -1)):
        with pytest.raises(ValueError, match="not a count"):
            record("scan", done, total)


def test_a_setup_reports_each_step_in_real_counts(tmp_path: Path) -> None:
    """tiny-llama (4 blocks, 28 layers): the model, each baseline, the calibration Grams block by block,
    the Wanda ranks layer by layer, the sensitivity scan's forward passes; then the record finishes."""
    spec = StudySpec(**SPEC | {"strategy": "tpe", "baselines": ["uniform", "owl", "sensitivity"]})
    study = create_study(sqlite_url(tmp_path), "shared", spec)
    reports: list[tuple[str, int, int]] = []
    seed_study(study, spec, Workbench(), lambda step, done, total: reports.append((step, done, total)))

    steps = [step for i, (step, _, _) in enumerate(reports) if i == 0 or reports[i - 1][0] != step]
    # OWL's Wanda scores need the calibration Grams; the scan's first pass needs the Wanda ranks.
    assert steps == ["loading the model", "baseline uniform", "baseline owl", "calibration statistics",
                     "baseline sensitivity", "sensitivity scan", "wanda ranks", "sensitivity scan"]
    by_step: dict[str, list[tuple[int, int]]] = {}
    for step, done, total in reports:
        by_step.setdefault(step, []).append((done, total))
    scan_passes = 4 * len(sensitivity_levels(spec.budget_ratio))
    assert by_step["calibration statistics"] == [(done, 4) for done in range(5)]
    assert by_step["wanda ranks"] == [(done, 28) for done in range(29)]
    assert by_step["sensitivity scan"] == [(done, scan_passes) for done in range(scan_passes + 1)]
    assert study.user_attrs["sensitivity_scan"]["evaluations"] == scan_passes  # the count is the work done
    assert by_step["baseline uniform"] == by_step["baseline owl"] == [(0, 1)]


def test_the_ranks_report_layer_by_layer_after_the_calibration(tmp_path: Path) -> None:
    from compress.session import ModelSession

    session = ModelSession.open("tiny-llama")
    reports: list[tuple[str, int, int]] = []
    with session.reporting(lambda step, done, total: reports.append((step, done, total))):
        session.ranks("wanda")
    layers = len(session.layers)
    assert reports == [("calibration statistics", done, 4) for done in range(5)] + \
        [("wanda ranks", done, layers) for done in range(layers + 1)]
    assert session.progress is None  # the block is over: nothing reports any more
    session.svd("svd")
    assert len(reports) == 5 + layers + 1


def test_the_record_outlives_the_setup_in_every_summary(tmp_path: Path) -> None:
    spec = StudySpec(**SPEC | {"strategy": "tpe", "baselines": ["uniform"]})
    study = create_study(sqlite_url(tmp_path), "shared", spec)
    final = {"step": "baseline uniform", "done": 0, "total": 1, "seconds": 2.5, "finished": True}
    study.set_user_attr(SETUP_PROGRESS_ATTR, final)
    assert summarize(study, spec)["setup"] == final
