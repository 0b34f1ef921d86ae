"""GET /v1/studies/{id} under 50 concurrent dashboard pollers while the study advances: every answer right.

    python -m pytest tests/api/test_api_latency.py -m slow -s

A ``slimscout serve --workers 0`` process on SQLite serves a study of 300 measured trials, each
carrying a full 30-block config document (as on smollm2-135m), while a writer adds a trial a second
with a known value. Two loads: 50 pollers every 2 s as the dashboard does, then 50 pollers back to
back (saturation). Asserted: every request answers 200; what each poller sees only moves forward
(trial counts never fall, the best never worsens); every answer agrees with the trials written by
then (its best is the minimum of its first ``n_complete`` values); and once the writer stops the
answer is exactly the study in the database. The latencies are printed, not asserted: speed
targets belong in benchmarks, not in a test that runs on a shared machine.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.api.conftest import FakeWorker

POLLERS = 50
TRIALS = 300
BLOCKS = 30


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def poll(url: str, *, seconds: float, interval_s: float) -> tuple[list[float], list[list[dict[str, Any]]], int]:
    """(latencies, each poller's answers in order, non-200 count)."""
    latencies: list[float] = []
    seen: list[list[dict[str, Any]]] = [[] for _ in range(POLLERS)]
    errors = 0
    limits = httpx.Limits(max_connections=POLLERS, max_keepalive_connections=POLLERS)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def poller(index: int) -> None:
            nonlocal errors
            rng = random.Random(index)
            await asyncio.sleep(rng.uniform(0, interval_s))  # dashboards do not open in lockstep
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - start)
                if response.status_code == 200:
                    seen[index].append(response.json())
                else:
                    errors += 1
                if interval_s:
                    await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - start)))

        await asyncio.gather(*(poller(i) for i in range(POLLERS)))
    return latencies, seen, errors


def check_answers(seen: list[list[dict[str, Any]]], values: list[float]) -> int:
    """Each poller's answers move forward and match the trials written so far; how many answers were checked."""
    checked = 0
    for answers in seen:
        last_count, last_best = 0, float("inf")
        for answer in answers:
            count, best = answer["counts"]["n_complete"], answer["best"]["kl"]
            assert TRIALS <= count <= len(values), count
            assert count >= last_count, (last_count, count)     # a poll never goes back in time
            assert best <= last_best, (last_best, best)         # nor does the best get worse
            assert best == min(values[:count]), (count, best)   # the best of exactly the trials it counted
            assert answer["progress"]["done"] == count
            last_count, last_best = count, best
            checked += 1
    return checked


def report(name: str, latencies: list[float], errors: int, seconds: float) -> str:
    ms = [1000 * x for x in latencies]
    return (f"{name}: {len(ms)} requests in {seconds:.0f} s ({len(ms) / seconds:.1f}/s), errors {errors}, "
            f"p50 {percentile(ms, 50):.1f} ms, p90 {percentile(ms, 90):.1f} ms, "
            f"p99 {percentile(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms")


@pytest.mark.slow
def test_detail_under_50_pollers(serve: Callable[..., str], worker: FakeWorker) -> None:
    base = serve()
    study = httpx.post(f"{base}/v1/studies", json={"model_id": "smollm2-135m", "budget": 0.5,
                                                  "n_trials": 1000}).json()
    name = study["optuna_study_name"]
    rng = random.Random(0)
    values: list[float] = []  # the kl of trial n, in the order they are written

    def add_trial() -> None:
        value = round(rng.uniform(0.1, 0.6) * 0.998 ** len(values), 4)  # mostly improving, as a search does
        worker.add(name, [value], ratio=0.5, model_id="smollm2-135m", blocks=BLOCKS)
        values.append(value)

    for _ in range(TRIALS):
        add_trial()
    url = f"{base}/v1/studies/{study['id']}"
    assert httpx.get(url).json()["counts"]["n_complete"] == TRIALS

    stop = threading.Event()

    def keep_measuring() -> None:  # the study advances while it is watched
        while not stop.wait(1.0):
            add_trial()

    writer = threading.Thread(target=keep_measuring, daemon=True)
    writer.start()
    lines = []
    try:
        for label, seconds, interval in (("dashboard pace (every 2 s)", 20.0, 2.0),
                                         ("saturation (back to back)", 10.0, 0.0)):
            latencies, seen, errors = asyncio.run(poll(url, seconds=seconds, interval_s=interval))
            assert errors == 0
            assert check_answers(seen, values) == len(latencies)
            assert all(answers for answers in seen)  # every poller got answers
            lines.append(report(label, latencies, errors, seconds))
    finally:
        stop.set()
        writer.join()
    assert len(values) > TRIALS  # the writer did add trials while polled
    final = httpx.get(url).json()
    stored = [t for t in worker.study(name).get_trials() if t.value is not None]
    assert final["counts"]["n_complete"] == len(stored) == len(values)
    assert final["best"]["kl"] == min(values) == min(t.value for t in stored)
    assert final["best"]["trial"] == min(stored, key=lambda t: (t.value, t.number)).number
    print("\nGET /v1/studies/{id}, " + f"{POLLERS} pollers, {TRIALS}+ trials:\n  " + "\n  ".join(lines))
