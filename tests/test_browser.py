"""serve.py's web page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) opens ``/`` of a server started here on a free loopback
port, uploads a photo, waits for the cut-out and checks that the image it shows has transparent
pixels; the screenshot is saved beside the test's files (its path is printed).

Skipped, saying why, when chromium or chromedriver is not installed (.ci/run installs them:
``apt-get install chromium chromium-driver``).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PHOTO = os.path.join(ROOT, "data_examples", "paixin_comp_mod", "half_body", "raw_image", "half_body_001.jpg")

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver)")

COUNT_TRANSPARENT = """
const img = document.querySelector('.card .after');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let transparent = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] < 255) transparent += 1;
return [transparent, canvas.width * canvas.height, img.naturalWidth, img.naturalHeight];
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def server(weights, tmp_path):
    """``http://127.0.0.1:PORT`` of serve.py on random U2NETP weights (64 px, guided)."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--model", weights, "--size", "64",
                                "--device", "cpu", "--threads", "1", "--port", str(port), "--log-level", "warning"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, process.stdout.read().decode()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False
    try:
        wait_until(ready, 60, "the server")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_uploads_a_photo_and_shows_a_transparent_cutout(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_until(lambda: "u2netp" in browser.find_element(By.ID, "model").text, 20, "the model's description")
    browser.find_element(By.ID, "files").send_keys(PHOTO)

    def state():
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        return cards[0].get_attribute("data-state") if cards else None
    wait_until(lambda: state() in ("done", "error"), 60, "the cut-out")
    status = browser.find_element(By.CSS_SELECTOR, ".card .status").text
    assert state() == "done", status
    transparent, total, width, height = browser.execute_script(COUNT_TRANSPARENT)
    assert (width, height) == (300, 400)  # the photo's own size (half_body_001.jpg)
    assert transparent > 0.05 * total, f"{transparent} of {total} pixels transparent"

    # the before/after slider half-way, for the screenshot, then the other views
    browser.execute_script("const s = document.querySelector('.card .split'); s.value = 50;"
                           "s.dispatchEvent(new Event('input'));")
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    browser.find_element(By.CSS_SELECTOR, "input[name=view][value=alpha]").click()
    wait_until(lambda: state() == "done" and "alpha" in browser.find_element(By.CSS_SELECTOR, ".card .status").text,
               60, "the alpha view")
    link = browser.find_element(By.CSS_SELECTOR, ".card .download")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download").endswith("_alpha.png")
