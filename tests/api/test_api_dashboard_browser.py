"""The dashboard in real headless Chromium: it follows a study live, without a reload, and downloads the best.

A ``slimscout serve --workers 0`` process serves a temporary SQLite database; the test plays the workers,
writing trials into the Optuna study while the page is open. The screenshot lands in the test's temporary
directory, or where SLIMSCOUT_SCREENSHOT says (``SLIMSCOUT_SCREENSHOT=docs/dashboard.png`` refreshes the docs).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from optuna.trial import TrialState

from compress.config import config_from_dict
from storage import add_artifact, get_engine, session_scope, set_status, update_summary

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from tests.api.conftest import FakeWorker

SCREENSHOT_ENV = "SLIMSCOUT_SCREENSHOT"
TOKEN = "alice-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BLOCKS = 30  # smollm2-135m


@pytest.fixture
def server(serve: Callable[..., str]) -> str:
    return serve(api_token=TOKEN)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1440,2400"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception:  # the page is mid-update
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def sign_in(driver: WebDriver, server: str, ready: Callable[[], Any], what: str) -> None:
    """Enter the token on the index page (kept for every other page), wait for ``ready``, and drop the
    browser log of the 401s from before the token was entered."""
    driver.get(server + "/")
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.find_element("id", "token-save").click()
    wait_for(ready, what=what)
    driver.get_log("browser")


def rows(driver: WebDriver) -> int:
    return int(driver.execute_script("return document.querySelectorAll('#trials-body tr').length"))


def traces(driver: WebDriver, chart: str) -> int:
    script = f"const c = document.getElementById('{chart}'); return c.data ? c.data.length : 0"
    return int(driver.execute_script(script))


def measure(worker: FakeWorker, name: str, rng: random.Random, count: int, *, start_kl: float,
            source: str = "sampler", predicted: bool = False) -> None:
    """Trials as a search would produce them: noisy, improving, near the budget."""
    for i in range(count):
        kl = max(0.05, start_kl * (0.97 ** i) + rng.gauss(0, 0.025))
        ratio = 0.5 + abs(rng.gauss(0, 0.03))
        worker.add(name, [round(kl, 4)], source=source, ratio=round(ratio, 4), duration_s=rng.uniform(20, 40),
                   model_id="smollm2-135m", blocks=BLOCKS, worker=rng.choice(["gpu-a:4121", "gpu-b:733"]),
                   predicted=round(kl * rng.uniform(0.85, 1.15), 4) if predicted else None)


@pytest.mark.slow
def test_dashboard_follows_a_study_live(server: str, browser: WebDriver, worker: FakeWorker, storage_url: str,
                                        tmp_path: Path) -> None:
    rng = random.Random(0)
    created = httpx.post(f"{server}/v1/studies", headers=AUTH, json={
        "model_id": "smollm2-135m", "budget": 0.5, "operators": ["wanda", "svd-whitened"], "n_trials": 60})
    assert created.status_code == 201, created.text
    study = created.json()
    sid, name = study["id"], study["optuna_study_name"]
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=sid, status="running")
    for baseline, kl in (("uniform", 0.62), ("owl", 0.55), ("sensitivity", 0.49)):
        worker.add(name, [kl], source=f"baseline:{baseline}", ratio=0.5, duration_s=30,
                   model_id="smollm2-135m", blocks=BLOCKS)
    measure(worker, name, rng, 6, start_kl=0.55)

    # The token, entered once on the index page, is kept for the study page.
    sign_in(browser, server, lambda: sid in browser.find_element("id", "studies").text, "the study in the list")
    assert "smollm2-135m" in browser.find_element("id", "model_id").text
    browser.get(f"{server}/studies/{sid}")
    wait_for(lambda: text_of(browser, "trial-count") == "9", what="9 trials on the page")
    assert rows(browser) == 9
    browser.execute_script("window.__notReloaded = 42")

    # Workers keep measuring; the page follows without reloading.
    measure(worker, name, rng, 30, start_kl=0.42, predicted=True, source="predictor")
    measure(worker, name, rng, 8, start_kl=0.40)
    worker.add(name, [None, None], state=TrialState.RUNNING, model_id="smollm2-135m",
               blocks=BLOCKS)
    pairs = [[t.user_attrs["predicted"], t.value] for t in worker.study(name).get_trials()
             if "predicted" in t.user_attrs]
    with session_scope(get_engine(storage_url)) as session:
        update_summary(session, study_id=sid, summary={
            "predictor": {"spearman": 0.83, "mae": 0.031, "n_train": 24, "n_screened": 1800, "pairs": pairs},
            "evaluations": 47, "sensitivity_evaluations": 30})
    wait_for(lambda: text_of(browser, "trial-count") == "47", what="47 trials on the page")
    wait_for(lambda: rows(browser) == 49, what="49 table rows (2 running)")
    assert browser.execute_script("return window.__notReloaded") == 42
    assert "2 running" in text_of(browser, "counts")
    assert text_of(browser, "eta") not in ("", "–")
    wait_for(lambda: not browser.execute_script("return document.getElementById('predictor-card').hidden"),
             what="the predictor chart")
    for chart in ("chart-best", "chart-pareto", "chart-predictor"):
        assert traces(browser, chart) >= 2, chart
    assert traces(browser, "chart-layers") == 7  # one trace per projection type
    best = httpx.get(f"{server}/v1/studies/{sid}", headers=AUTH).json()["best"]
    assert f"#{best['trial']}" in text_of(browser, "best")

    # The download button delivers the winning config document.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    button = browser.find_element("id", "download-config")
    assert button.is_enabled()
    button.click()
    target = downloads / f"slimscout-{sid}-best-config.json"
    wait_for(target.is_file, what="the downloaded config")
    document = json.loads(target.read_text())
    assert config_from_dict(document).model_id == "smollm2-135m"
    assert document == httpx.get(f"{server}/v1/studies/{sid}/best-config", headers=AUTH).json()
    fetched = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {headers: {Authorization: 'Bearer ' + localStorage.getItem('slimscout.token')}})
          .then((r) => r.json()).then(done, (e) => done(String(e)));""", f"/v1/studies/{sid}/best-config")
    assert fetched == document

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)  # let Plotly finish its transitions
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))


@pytest.mark.slow
def test_docs_render_offline_under_the_csp(server: str, browser: WebDriver) -> None:
    """/docs draws every operation from this server's own assets; the CSP blocks nothing it needs."""
    browser.get(f"{server}/docs")
    operations = wait_for(lambda: browser.execute_script("return document.querySelectorAll('.opblock').length"),
                          what="Swagger UI's operations")
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert operations == sum(len(methods) for methods in paths.values())
    resources = browser.execute_script("return performance.getEntriesByType('resource').map((r) => r.name)")
    assert resources and all(name.startswith(server) for name in resources), resources  # nothing from a CDN
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_dashboard_shows_the_recovery_of_the_winner(server: str, browser: WebDriver, worker: FakeWorker,
                                                    storage_url: str) -> None:
    """``recover_steps``: the page shows the recovery's progress while it runs, then holdout before → after."""
    created = httpx.post(f"{server}/v1/studies", headers=AUTH, json={
        "model_id": "smollm2-135m", "budget": 0.4, "n_trials": 1, "recover_steps": 120})
    assert created.status_code == 201, created.text
    sid, name = created.json()["id"], created.json()["optuna_study_name"]
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=sid, status="running")
    worker.add(name, [0.9], source="baseline:uniform", ratio=0.4, duration_s=30, model_id="smollm2-135m",
               blocks=BLOCKS)
    holdout = {"dense": {"ppl": 30.37, "kl": 0.0}, "best": {"ppl": 111.3, "kl": 1.52}, "tokens": 4096}

    def summary(recovery: dict[str, Any]) -> None:
        with session_scope(get_engine(storage_url)) as session:
            update_summary(session, study_id=sid, summary={"holdout": holdout, "recovery": recovery})

    summary({"status": "running", "step": 37, "steps": 120, "loss": 0.8125, "eta_s": 250.0})
    sign_in(browser, server, lambda: sid in browser.find_element("id", "studies").text, "the study in the list")
    browser.get(f"{server}/studies/{sid}")
    running = wait_for(lambda: "step 37 / 120" in text_of(browser, "recovery") and text_of(browser, "recovery"),
                       what="the recovery's progress")
    assert "loss 0.8125" in running and "ETA 4m 10s" in running
    assert browser.execute_script("return document.getElementById('download-recovered').hidden")

    summary({"status": "done", "steps": 120, "steps_run": 120, "seconds": 400.0, "holdout_before": holdout["best"],
             "holdout_after": {"ppl": 54.5, "kl": 0.61}})
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=sid, kind="recovered-checkpoint", path="/nonexistent", size_bytes=1,
                     sha256="0")
    done = wait_for(lambda: "→" in text_of(browser, "recovery") and text_of(browser, "recovery"),
                    what="holdout before → after")
    assert "holdout ppl 111.3 → 54.5" in done and "kl 1.52 → 0.61" in done and "120 steps" in done
    wait_for(lambda: not browser.execute_script("return document.getElementById('download-recovered').hidden"),
             what="the recovered checkpoint's download button")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_dashboard_shows_the_setup_step_and_how_far_it_is(server: str, browser: WebDriver, storage_url: str) -> None:
    """While a worker sets the study up, the page says which step runs, its counts and a bar; then that it is done."""
    created = httpx.post(f"{server}/v1/studies", headers=AUTH, json={"model_id": "smollm2-135m", "budget": 0.5})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]

    def setup(record: dict[str, Any]) -> None:  # as the worker's ThrottledRecord writes it (search.service_worker)
        with session_scope(get_engine(storage_url)) as session:
            update_summary(session, study_id=sid, summary={"evaluations": 0, "setup": record})

    sign_in(browser, server, lambda: sid in browser.find_element("id", "studies").text, "the study in the list")
    browser.get(f"{server}/studies/{sid}")
    wait_for(lambda: text_of(browser, "status") == "queued", what="the queued study")
    assert browser.execute_script("return document.getElementById('setup').hidden")  # no worker on it yet

    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=sid, status="running")
    setup({"step": "sensitivity scan", "done": 37, "total": 120, "seconds": 95.0, "finished": False})
    line = wait_for(lambda: "37 / 120" in text_of(browser, "setup-text") and text_of(browser, "setup-text"),
                    what="the setup's step and counts")
    assert line == "Setting up: sensitivity scan · 37 / 120 · 1m 35s so far"
    assert not browser.execute_script("return document.getElementById('setup').hidden")
    width = "return document.getElementById('setup-bar').style.width"
    wait_for(lambda: browser.execute_script(width) == "30.8%", what="the setup's bar at 37/120")

    setup({"step": "sensitivity scan", "done": 120, "total": 120, "seconds": 301.0, "finished": True})
    wait_for(lambda: text_of(browser, "setup-text") == "Setup done in 5m 1s", what="the setup marked done")
    assert browser.execute_script("return document.getElementById('setup-progress').hidden")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_dashboard_group_page_draws_each_budgets_winner_on_one_frontier(server: str, browser: WebDriver,
                                                                       worker: FakeWorker, storage_url: str,
                                                                       tmp_path: Path) -> None:
    """A list of budgets typed into the index form starts a group; its page follows the members and plots
    each budget's holdout winner, the frontier joining the ones no smaller budget beats."""
    model_choices = "return document.getElementById('model_id').options.length"
    sign_in(browser, server, lambda: browser.execute_script(model_choices), "the model choices")
    budget = browser.find_element("id", "budget")
    budget.clear()
    budget.send_keys("0.3, 0.5, 0.7")
    browser.find_element("id", "start-button").click()
    wait_for(lambda: "/groups/" in browser.current_url, what="the group page")
    gid = browser.current_url.rstrip("/").split("/")[-1]
    group = httpx.get(f"{server}/v1/groups/{gid}", headers=AUTH).json()
    assert group["budgets"] == [0.3, 0.5, 0.7]
    members = {m["budget"]: m["study_id"] for m in group["per_budget"]}
    wait_for(lambda: text_of(browser, "budget-count") == "3", what="three budgets on the page")

    # Workers measure each member; the 0.5 one is still searching when the others are re-measured on holdout.
    names = {b: httpx.get(f"{server}/v1/studies/{sid}", headers=AUTH).json()["optuna_study_name"]
             for b, sid in members.items()}
    holdout_kl = {0.3: 0.91, 0.7: 0.22}
    for b, sid in members.items():
        with session_scope(get_engine(storage_url)) as session:
            set_status(session, study_id=sid, status="running")
        worker.add(names[b], [round(1.2 - b, 3), round(1.1 - b, 3)], ratio=1 - b, duration_s=20,
                   model_id="smollm2-135m", blocks=BLOCKS)
        if b in holdout_kl:
            holdout = {"dense": {"ppl": 30.4, "kl": 0.0}, "tokens": 4096,
                       "best": {"ppl": 30.4 + 80 * holdout_kl[b], "kl": holdout_kl[b]},
                       "uniform": {"ppl": 40.0 + 90 * holdout_kl[b], "kl": holdout_kl[b] + 0.15}}
            with session_scope(get_engine(storage_url)) as session:
                update_summary(session, study_id=sid, summary={"holdout": holdout, "evaluations": 2})
                set_status(session, study_id=sid, status="completed")
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=members[0.7], kind="checkpoint", path="/nonexistent", size_bytes=1, sha256="0")

    wait_for(lambda: text_of(browser, "done-count") == "2", what="two budgets done")
    assert text_of(browser, "status") == "running"
    frontier = """const c = document.getElementById('chart-frontier');
        return c.data ? c.data.map((t) => [t.name, t.x, t.y]) : null"""
    drawn = wait_for(lambda: (lambda d: d if d and len(d) >= 3 else None)(browser.execute_script(frontier)),
                     what="the frontier")
    by_name = {name: (x, y) for name, x, y in drawn}
    assert by_name["frontier (holdout)"] == ([0.3, 0.7], [0.91, 0.22])
    assert by_name["best so far (search split)"] == ([0.5], [0.6])  # the lower of its two trials
    assert by_name["uniform (holdout)"] == ([0.3, 0.7], [pytest.approx(1.06), pytest.approx(0.37)])
    rows = browser.find_elements("css selector", "#members tr")
    assert [row.find_element("css selector", "td").text for row in rows] == ["0.3", "0.5", "0.7"]
    assert len(browser.find_elements("css selector", "#members button.checkpoint")) == 1  # the 0.7 member's
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#members a")]
    assert links == [f"{server}/studies/{members[b]}" for b in (0.3, 0.5, 0.7)]
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    time.sleep(1.0)  # let Plotly finish its transitions
    assert browser.save_screenshot(str(tmp_path / "group.png"))
