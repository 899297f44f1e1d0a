"""Headless Chromium for the UI checks (Debian's `chromium` + `chromium-driver`, selenium from the `browser` extra).
Every test here is skipped where no browser is installed; `RLHF_SCREENSHOTS=DIR` keeps the screenshots."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMEDRIVER = shutil.which("chromedriver")


def pytest_collection_modifyitems(items):
    try:
        import selenium.webdriver  # noqa: F401
        missing = None if CHROMEDRIVER else "no chromium-driver (apt-get install chromium chromium-driver)"
    except ImportError:
        missing = "no selenium (pip install -e '.[browser]')"
    for item in items:
        if missing and "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    shots = Path(os.environ.get("RLHF_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver.shot = lambda name: driver.save_screenshot(str(shots / f"{name}.png"))
    yield driver
    driver.quit()


def text(driver, wait: float = 8.0, patience: float = 60.0) -> str:
    """The page's visible text once the single-page app has filled it in: after `wait` seconds, and then for as long
    as it still says it is loading (a busy machine renders slowly), up to `patience` more."""
    time.sleep(wait)
    deadline = time.monotonic() + patience
    body = driver.find_element("tag name", "body").text
    while "Loading..." in body and time.monotonic() < deadline:
        time.sleep(2)
        body = driver.find_element("tag name", "body").text
    return body
