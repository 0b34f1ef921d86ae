"""Latency of GET /v1/studies/{id} under 50 concurrent dashboard pollers (reported, not asserted).

    python -m pytest tests/api/test_api_latency.py -m slow -s

A ``slimscout serve --workers 0`` process on SQLite serves a study of 300 measured trials, each
carrying a full 30-block config document (as on smollm2-135m), while a writer adds a trial a second.
Two loads: 50 pollers every 2 s as the dashboard does, then 50 pollers back to back (saturation).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

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


async def poll(url: str, *, seconds: float, interval_s: float) -> tuple[list[float], int]:
    latencies: list[float] = []
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
                errors += response.status_code != 200
                if interval_s:
                    await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - start)))

        await asyncio.gather(*(poller(i) for i in range(POLLERS)))
    return latencies, errors


def report(name: str, latencies: list[float], errors: int, seconds: float) -> str:
    ms = [1000 * x for x in latencies]
    return (f"{name}: {len(ms)} requests in {seconds:.0f} s ({len(ms) / seconds:.1f}/s), errors {errors}, "
            f"p50 {percentile(ms, 50):.1f} ms, p90 {percentile(ms, 90):.1f} ms, "
            f"p99 {percentile(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms")


@pytest.mark.slow
def test_detail_latency_under_50_pollers(serve: Callable[..., str], worker: FakeWorker) -> None:
    base = serve()
    study = httpx.post(f"{base}/v1/studies", json={"model_id": "smollm2-135m", "budget": 0.5,
                                                  "n_trials": 1000}).json()
    name = study["optuna_study_name"]
    rng = random.Random(0)
    for _ in range(TRIALS):
        worker.add(name, [round(rng.uniform(0.1, 0.6), 4)], ratio=0.5, model_id="smollm2-135m", blocks=BLOCKS)
    url = f"{base}/v1/studies/{study['id']}"
    assert httpx.get(url).json()["counts"]["n_complete"] == TRIALS

    stop = threading.Event()

    def keep_measuring() -> None:  # the study advances while it is watched
        while not stop.wait(1.0):
            worker.add(name, [round(rng.uniform(0.1, 0.6), 4)], ratio=0.5, model_id="smollm2-135m",
                       blocks=BLOCKS)

    writer = threading.Thread(target=keep_measuring, daemon=True)
    writer.start()
    try:
        lines = []
        for label, seconds, interval in (("dashboard pace (every 2 s)", 20.0, 2.0),
                                         ("saturation (back to back)", 10.0, 0.0)):
            latencies, errors = asyncio.run(poll(url, seconds=seconds, interval_s=interval))
            lines.append(report(label, latencies, errors, seconds))
            assert errors == 0
    finally:
        stop.set()
        writer.join()
    print("\nGET /v1/studies/{id}, " + f"{POLLERS} pollers, {TRIALS}+ trials:\n  " + "\n  ".join(lines))
