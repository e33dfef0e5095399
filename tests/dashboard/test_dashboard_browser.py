"""The dashboard in a real browser (Debian's headless chromium, driven by selenium through
Debian's chromedriver: nothing is downloaded) against a lab swarm: a service created through
the API shows up with its tasks in the node columns, and a scale is on the page within a second
of the API call returning. The screenshot of the last run is kept as /tmp/shoal-dashboard/dashboard.png
(outside pytest's tmp dirs, which other runs rotate away); its path is printed."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.lab import Lab
from tests.support.netns_port import NamespacePort
from tests.swarm.helpers import api, swarm_lab

pytestmark = pytest.mark.lab

MANAGER = "manager-1"
DASHBOARD_PORT = 8080            # on each lab host's own loopback: nothing else listens there
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), "")
FOLLOW = 1.0                     # seconds the page may lag a change
SCREENSHOT = Path(tempfile.gettempdir()) / "shoal-dashboard" / "dashboard.png"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("SHOAL_DASHBOARD_ADDR", str(DASHBOARD_PORT))   # the lab's daemons inherit it
    with swarm_lab("db", tmp_path_factory.mktemp("img"), managers=1, workers=1) as the_lab:
        yield the_lab


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM or not shutil.which(CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are not installed: run deploy/install.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_state(driver: Any) -> dict[str, Any]:
    """What the page shows of service `web`: its replicas cell and its task boxes by state."""
    return dict(driver.execute_script("""
        const row = document.querySelector('#services tr[data-service="web"] .replicas');
        const boxes = [...document.querySelectorAll('.node .task[data-service="web"]')];
        return {replicas: row ? row.textContent : null,
                live: document.getElementById('connection').dataset.state,
                columns: [...document.querySelectorAll('.node[data-node]')].map(n => n.dataset.node),
                tasks: boxes.map(b => b.dataset.state),
                placed: boxes.filter(b => b.closest('.node').dataset.node !== '').length};
    """))


def wait_page(driver: Any, check: Any, timeout: float, what: str) -> dict[str, Any]:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return dict(WebDriverWait(driver, timeout, poll_frequency=0.05).until(
            lambda d: (lambda s: s if check(s) else False)(page_state(d))))
    except Exception as e:
        raise AssertionError(f"the page did not show {what} within {timeout}s; it shows {page_state(driver)}") from e


def scale(lab: Lab, replicas: int) -> None:
    service = api(lab, MANAGER, "GET", "/services/web")
    spec = service["Spec"]
    spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    api(lab, MANAGER, "POST", f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])


def test_the_dashboard_follows_a_service_live(lab: Lab, browser: Any) -> None:
    began = time.monotonic()
    with NamespacePort(lab.node(MANAGER).ns, DASHBOARD_PORT) as port:
        browser.get(port.url + "/")
        shown = wait_page(browser, lambda s: s["live"] == "live" and len(s["columns"]) == 2, 10,
                          "both nodes, live")
        assert sorted(shown["columns"]) == ["manager-1", "worker-1"]

        api(lab, MANAGER, "POST", "/services/create", {
            "Name": "web", "Mode": {"Replicated": {"Replicas": 2}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": SLEEPER,
                                               "StopGracePeriod": 2_000_000_000}}})
        wait_page(browser, lambda s: s["replicas"] is not None and s["replicas"].endswith("/2"), FOLLOW,
                  "the new service")
        wait_page(browser, lambda s: s["tasks"] == ["running", "running"] and s["placed"] == 2, 30,
                  "its two tasks running on the nodes")

        scale(lab, 4)
        wait_page(browser, lambda s: s["replicas"].endswith("/4") and len(s["tasks"]) == 4, FOLLOW,
                  "the scale to 4 (desired count and the new tasks)")
        final = wait_page(browser, lambda s: s["replicas"] == "4/4" and s["tasks"].count("running") == 4, 30,
                          "four running tasks")
        assert final["placed"] == 4

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 0
        print(f"dashboard screenshot: {SCREENSHOT}")
    assert time.monotonic() - began < 60
