"""End to end: `nextbest console` as a real process over a quickstart work dir with an outbound plan,
every page loaded in Debian's headless Chromium (Selenium through /usr/bin/chromedriver, nothing
downloaded): signed in with the API key, key figures against summary.json and the event log, no
raw customer id in any page source but the one typed, screenshots, and each page in under a second."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from nextbest.cli.server import free_port
from tests.conftest import REPO_ROOT
from tests.servers import run_cli

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "console-e2e-key"
PERIOD = 28 * 86400.0  # the overview's default period


@pytest.fixture(scope="module")
def workdir(quickstart_workdir, tmp_path_factory) -> Path:
    """A copy of the quickstart work dir with one savings plan on the first weekday after its last month."""
    wd = tmp_path_factory.mktemp("console") / "work"
    shutil.copytree(quickstart_workdir, wd, ignore=shutil.ignore_patterns("*.log"))
    taken = pd.read_parquet(wd / "features" / "customer_segments.parquet", columns=["event_timestamp"]).max()
    day = pd.Timestamp(taken.iloc[0]).tz_localize(None).normalize() + pd.Timedelta(days=1)
    while day.weekday() >= 5:
        day += pd.Timedelta(days=1)
    proc = run_cli("plan", "--campaign", "savings", "--date", str(day.date()), workdir=wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


@pytest.fixture(scope="module")
def console(workdir, tmp_path_factory):
    """`nextbest console` on a free port with an API key; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("console-log") / "console.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nextbest.cli", "console", "--workdir", str(workdir),
                                 "--port", str(port)], cwd=REPO_ROOT, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "NEXTBEST_API_KEY": KEY})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/sign-in", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the console did not answer within 60 s"
                time.sleep(0.3)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the console's browser test needs Debian's chromium and chromium-driver: install them "
                    "(apt-get install chromium chromium-driver) or run .ci/run, which does")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _load(driver, url: str, shots: Path, name: str) -> float:
    """Loads `url`, saves a screenshot, and returns the seconds the page took to load."""
    started = time.perf_counter()
    driver.get(url)
    seconds = time.perf_counter() - started
    driver.save_screenshot(str(shots / f"{name}.png"))
    return seconds


def _no_other_ids(source: str, ids: set[str], typed: str | None = None) -> list[str]:
    return sorted(i for i in ids if i != typed and i in source)


def test_every_page_in_a_browser(workdir, console, browser, tmp_path):
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    ids = set(pd.read_parquet(workdir / "raw" / "customers.parquet", columns=["customer_id"])["customer_id"])
    summary = json.loads(next((workdir / "reports").glob("*/summary.json")).read_text())
    with sqlite3.connect(workdir / "events.db") as conn:
        last = conn.execute("SELECT MAX(created_at) FROM decisions").fetchone()[0]
        in_period = conn.execute("SELECT COUNT(*) FROM decisions WHERE created_at >= ?", (last - PERIOD,)).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]

    # Signing in with the service's key.
    browser.get(console + "/")
    assert "Sign in" in browser.title
    browser.find_element(By.NAME, "key").send_keys(KEY)
    browser.find_element(By.TAG_NAME, "form").submit()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"

    times = {}
    times["overview"] = _load(browser, console + "/", shots, "overview")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert f"made {in_period:,} decisions" in page
    assert ("The gate passed" if summary["passed"] else "The gate failed") in page
    assert browser.find_elements(By.CSS_SELECTOR, "svg")  # the weekly trends
    assert not _no_other_ids(browser.page_source, ids)

    times["campaigns"] = _load(browser, console + "/campaigns", shots, "campaigns")
    plan = json.loads(next((workdir / "plans").glob("savings-*/plan.json")).read_text())
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Campaign savings" in page and "Contacts by channel against capacity" in page
    for channel, d in plan["channels"].items():
        assert f"{channel} {d['contacts']:,} {d['capacity']:,}" in page
    assert not _no_other_ids(browser.page_source, ids)

    times["decisions"] = _load(browser, console + "/decisions", shots, "decisions")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr")) == min(50, total)
    assert not _no_other_ids(browser.page_source, ids)

    times["models"] = _load(browser, console + "/models", shots, "models")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "challenger, champion" in page
    assert f"{len(summary['drifted_columns'])} of {len(summary['columns'])} feature columns drifted" in page
    assert not _no_other_ids(browser.page_source, ids)

    # A contacted customer, typed into the portrait's form.
    contacts = pd.concat(pd.read_parquet(p) for p in (workdir / "plans").glob("savings-*/contacts_*.parquet"))
    typed = str(contacts["customer_id"].iloc[0])
    times["customer"] = _load(browser, console + "/customer", shots, "customer-form")
    browser.find_element(By.NAME, "id").send_keys(typed)
    started = time.perf_counter()
    browser.find_element(By.TAG_NAME, "form").submit()
    assert browser.find_element(By.TAG_NAME, "h2").text == f"Customer {typed}"
    times["customer portrait"] = time.perf_counter() - started
    browser.save_screenshot(str(shots / "customer.png"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Holdings and balances" in page and re.search(r"\d+ decisions? logged", page) and "outbound" in page
    assert typed in browser.page_source and not _no_other_ids(browser.page_source, ids, typed)

    times["search"] = _load(browser, console + f"/decisions?customer={typed}", shots, "decisions-search")
    assert browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert not _no_other_ids(browser.page_source, ids, typed)

    times["bad date"] = _load(browser, console + "/decisions?from=2026-02-30", shots, "bad-date")
    assert "is not a date" in browser.find_element(By.TAG_NAME, "body").text

    assert all((shots / f"{n}.png").stat().st_size > 0 for n in ("overview", "campaigns", "customer", "models"))
    slow = {k: round(v, 3) for k, v in times.items() if v >= 1.0}
    assert not slow, f"pages over a second: {slow}"

    # What the service would offer the customer now: the read-only decision engine loads in the background
    # from the console's start, and the portrait shows its ranking once it is ready.
    url = console + f"/customer?id={typed}&channel=mobile_app"
    deadline = time.monotonic() + 120
    browser.get(url)
    while "is loading" in browser.find_element(By.TAG_NAME, "body").text:
        assert time.monotonic() < deadline, "the decision engine did not load within 2 minutes"
        time.sleep(1)
        browser.get(url)
    seconds = _load(browser, url, shots, "offers-now")  # the engine ready: the portrait with its offers
    assert seconds < 1.0, f"the portrait with offers now took {seconds:.2f} s"
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Offers now" in page and "could not" not in page, page[-2000:]
    assert "P(accept), policy now" in page or "Nothing would be offered" in page
    assert "already held" in page  # a customer holds at least the current account, held back by its rule
    assert typed in browser.page_source and not _no_other_ids(browser.page_source, ids, typed)
