"""Screenshot a running service's study page in headless Chromium (for docs/dashboard.png).

Usage: ``.venv/bin/python scripts/dashboard_screenshot.py http://127.0.0.1:8765 STUDY_ID docs/dashboard.png``
(``--token T`` when the service has an API token). Needs chromium and chromium-driver (Debian).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server")
    parser.add_argument("study_id")
    parser.add_argument("out")
    parser.add_argument("--token", default="")
    parser.add_argument("--size", default="1440,2000", help="window width,height")
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size={args.size}"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        server = args.server.rstrip("/")
        driver.get(f"{server}/")
        if args.token:
            driver.execute_script("localStorage.setItem('slimscout.token', arguments[0])", args.token)
        driver.get(f"{server}/studies/{args.study_id}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the trial table and the plots are drawn
            drawn = driver.execute_script(
                "return document.querySelectorAll('#trials-body tr').length > 0"
                " && document.querySelectorAll('.js-plotly-plot').length > 0")
            if drawn:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # Plotly's transitions
        driver.save_screenshot(args.out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
