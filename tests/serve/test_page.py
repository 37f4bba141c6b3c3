"""The web page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
selenium with the driver given explicitly, so nothing is downloaded): upload an image, the
drawn boxes equal the API's answer, the score slider hides the low-scoring boxes without a
new request. Screenshots go to ``$EFFICIENTDET_TEST_ARTIFACTS`` (default: the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, detect, scene

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLOOR = 0.05  # the page asks for every detection down to this score

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture()
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=412,915", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EFFICIENTDET_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver: Any, script: str, timeout: float = 30.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def test_page_draws_the_api_answer_and_the_slider_filters(server: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    photo = tmp_path / "photo.jpg"
    scene(11, (360, 240)).save(photo, quality=92)
    status, api = detect(server.port, photo.read_bytes(), score_threshold=str(FLOOR))
    assert status == 200 and len(api["detections"]) > 3

    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, "return document.getElementById('model-name').textContent.includes('efficientdet_lite0')")
    assert "cat, dog, cup" in browser.find_element(By.ID, "classes").text
    browser.find_element(By.ID, "file").send_keys(str(photo))
    _wait(browser, "return document.body.dataset.state === 'done'")

    drawn = browser.execute_script(
        "return [...document.querySelectorAll('#overlay g.det')].map(g => {"
        "  const r = g.querySelector('rect');"
        "  return {score: parseFloat(g.dataset.score), text: g.querySelector('text').textContent,"
        "          box: ['x', 'y', 'width', 'height'].map(k => parseFloat(r.getAttribute(k)))}; })"
    )
    assert len(drawn) == len(api["detections"])
    for got, want in zip(drawn, api["detections"]):
        x1, y1, x2, y2 = want["box"]
        assert got["box"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got["text"] == f"{want['name']} {want['score']:.2f}"
    # on screen: the first box sits where its image coordinates say, at the displayed scale
    where = browser.execute_script(
        "const img = document.getElementById('photo').getBoundingClientRect();"
        "const r = document.querySelector('#overlay g.det rect').getBoundingClientRect();"
        "return {scale: img.width / document.getElementById('photo').naturalWidth, x: r.left - img.left, y: r.top - img.top}"
    )
    x1, y1 = api["detections"][0]["box"][:2]
    assert where["x"] == pytest.approx(x1 * where["scale"], abs=2.5)
    assert where["y"] == pytest.approx(y1 * where["scale"], abs=2.5)

    scores = sorted(d["score"] for d in api["detections"])
    cut = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 4)  # between two scores
    requests_before = _detect_requests(browser, server)
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.step = 'any'; s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));", cut,
    )  # fmt: skip
    visible = [g for g in browser.find_elements(By.CSS_SELECTOR, "#overlay g.det") if g.is_displayed()]
    shown = sorted(float(g.get_attribute("data-score")) for g in visible)
    assert shown == pytest.approx([s for s in scores if s >= cut]) and 0 < len(shown) < len(scores)
    assert browser.find_element(By.ID, "count").text == f"{len(shown)} of {len(scores)} shown"
    assert _detect_requests(browser, server) == requests_before  # filtered in the page, no new request
    path = _artifacts(tmp_path) / "serve_page_phone.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    print(f"screenshot: {path}")


def _detect_requests(browser: Any, server: Server) -> float:
    from .conftest import metric, request

    text = request(server.port, "GET", "/metrics")[2].decode()
    return metric(text, 'efficientdet_requests_total{path="/v1/detect",status="200"}')


def _upload(browser: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.execute_script("document.body.dataset.state = ''; document.getElementById('file').value = ''")
    browser.find_element(By.ID, "file").send_keys(str(path))


def test_an_error_clears_the_previous_images_boxes(server: Server, browser: Any, tmp_path: Path) -> None:
    """A failed upload after a good one left the good image's table and "N of M shown" under
    the error, as if they were the new file's."""
    from selenium.webdriver.common.by import By

    photo, junk = tmp_path / "photo.jpg", tmp_path / "notes.jpg"
    scene(11, (360, 240)).save(photo, quality=92)
    junk.write_text("not an image")
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, "return document.getElementById('model-name').textContent.includes('efficientdet_lite0')")
    _upload(browser, photo)
    _wait(browser, "return document.body.dataset.state === 'done'")
    assert browser.find_elements(By.CSS_SELECTOR, "#list tbody tr")
    _upload(browser, junk)
    _wait(browser, "return document.body.dataset.state === 'error'")
    assert "not an image file" in browser.find_element(By.ID, "status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#list tbody tr, #overlay g.det") == []
    assert browser.find_element(By.ID, "count").text == ""
    assert not browser.find_element(By.ID, "list").is_displayed()
    assert not browser.find_element(By.ID, "stage").is_displayed()  # no broken-image icon


def test_a_late_answer_for_an_earlier_file_is_not_drawn(server: Server, browser: Any, tmp_path: Path) -> None:
    """Two files chosen in quick succession: the first one's answer, arriving last, was drawn
    over the second photo with the first one's size and count in the status line."""
    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    scene(11, (360, 240)).save(first, quality=92)
    scene(12, (200, 300)).save(second, quality=92)
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, "return document.getElementById('model-name').textContent.includes('efficientdet_lite0')")
    # The page's first detect answer is held back 1.5 s, so it lands after the second's.
    browser.execute_script(
        "const real = window.fetch; let calls = 0;"
        "window.fetch = async (url, init) => {"
        "  const r = await real(url, init);"
        "  if (String(url).startsWith('/v1/detect') && calls++ === 0) await new Promise(ok => setTimeout(ok, 1500));"
        "  return r; };"
    )
    _upload(browser, first)
    _upload(browser, second)
    _wait(browser, "return document.body.dataset.state === 'done'")
    browser.execute_script("return new Promise(ok => setTimeout(ok, 2500))")  # the held answer arrives
    view = browser.execute_script("return document.getElementById('overlay').getAttribute('viewBox')")
    assert view == "0 0 200 300"
    assert "(200x300 px)" in browser.execute_script("return document.getElementById('status').textContent")


def test_a_page_opened_before_the_model_answers_picks_it_up_later(server: Server, browser: Any) -> None:
    """A page opened while ``/v1/model`` did not answer (the model still loading) said "reload the
    page" for good, and kept its default score floor even for a graph whose in-graph threshold
    is higher (every upload then a 422)."""
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/v1/model"]})
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, "return document.getElementById('model-name').textContent.includes('not ready')")
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    _wait(browser, "return document.getElementById('model-name').textContent.includes('efficientdet_lite0')", 10)
    assert "cat, dog, cup" in browser.find_element(By.ID, "classes").text
