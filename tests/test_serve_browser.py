"""The web page of ``plaindet serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium loads the page from a ``plaindet serve`` process started here,
uploads a shapes image, and the boxes drawn on the canvas and the detections table match the API's
answer for the same image; moving the threshold slider asks again; a non-image gets the server's
error. A screenshot is saved (to ``$PLAINDET_SCREENSHOT`` when set, else into the test's folder).

Run it locally: ``apt-get install -y chromium chromium-driver`` (Debian/Ubuntu), then
``python -m pytest -q tests/test_serve_browser.py``. Without Chromium the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (extra dev)")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run installs them)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, data: bytes | None = None, content_type: str = "image/jpeg", timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """``plaindet serve`` of the trained shapes model on a free loopback port, ready."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    args = [sys.executable, "-m", "plaindet", "serve", "--weights", f"shapes={trained_run / 'best.safetensors'}", "--port", str(port), "--threads", "1", "--batch-wait-ms", "0"]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, log.read_text()
            try:
                if api(f"{url}/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"the server did not get ready:\n{log.read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def table_rows(driver) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#detections tbody tr')].map(r => [...r.cells].map(c => c.textContent));"
    )


def expected_rows(answer: dict) -> list[list[str]]:
    """The table the page should show for an API answer: as the page formats the numbers."""
    return [
        [str(i + 1), d["class_name"], f"{d['score']:.3f}", *(f"{v:.1f}" for v in d["box"])]
        for i, d in enumerate(answer["images"][0]["detections"])
    ]


def test_the_page_shows_the_apis_detections(server, browser, tiny_shapes, tmp_path):
    from selenium.webdriver.common.by import By

    image = sorted((tiny_shapes / "valid").glob("*.jpg"))[0]
    status, answer = api(f"{server}/v1/detect?threshold=0.30&model=shapes", image.read_bytes())
    assert status == 200 and answer["images"][0]["detections"], answer  # the trained model finds shapes

    browser.get(server + "/")
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('model').options.length") == 1)
    counter = browser.execute_script("return document.body.dataset.state")
    assert counter == "idle"
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
    assert browser.execute_script("return document.body.dataset.state") == "done", browser.find_element(By.ID, "status").text

    # The table and the drawn boxes are the API's answer for the same image.
    assert table_rows(browser) == expected_rows(answer)
    drawn = json.loads(browser.execute_script("return document.getElementById('view').dataset.boxes"))
    assert [d["box"] for d in drawn] == [d["box"] for d in answer["images"][0]["detections"]]
    assert [d["label"] for d in drawn] == [d["label"] for d in answer["images"][0]["detections"]]
    size = browser.execute_script("const c = document.getElementById('view'); return [c.width, c.height];")
    assert size == [answer["images"][0]["width"], answer["images"][0]["height"]]
    # Each box is really on the canvas: the middle of its left side has the box's colour.
    pixels = browser.execute_script(
        """const c = document.getElementById('view'), ctx = c.getContext('2d');
        return JSON.parse(c.dataset.boxes).map(d => {
          const x = Math.round(d.box[0]), y = Math.round((d.box[1] + d.box[3]) / 2);
          return [d.color, Array.from(ctx.getImageData(Math.min(x, c.width - 1), y, 1, 1).data.slice(0, 3))];
        });"""
    )
    for color, rgb in pixels:
        assert rgb == [int(color[i : i + 2], 16) for i in (1, 3, 5)], (color, rgb)
    status_text = browser.find_element(By.ID, "status").text
    assert f"{len(drawn)} detections by shapes (torch)" in status_text and "round trip" in status_text
    assert browser.find_element(By.ID, "download").is_enabled()

    screenshot = Path(os.environ.get("PLAINDET_SCREENSHOT") or tmp_path / "serve_page.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # The threshold slider asks again, and the page shows that answer.
    _, high = api(f"{server}/v1/detect?threshold=0.90&model=shapes", image.read_bytes())
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = '0.90'; s.dispatchEvent(new Event('input'));"
    )
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.state") == "done" and table_rows(d) == expected_rows(high))


def test_the_page_shows_the_servers_error_for_a_non_image(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    browser.get(server + "/")
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('model').options.length") == 1)
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.state") == "error")
    assert "415: notes.png: not an image" in browser.find_element(By.ID, "status").text
    assert api(f"{server}/healthz")[0] == 200
