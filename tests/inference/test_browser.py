"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; never ``playwright install``).

Uploads a real NIH radiograph, waits for the bars, checks them against the API, toggles heatmaps, and shows an
error for a bad file. Skipped when ``/usr/bin/chromium`` is missing, unless ``CXR_REQUIRE_BROWSER=1`` (CI).
Set ``CXR_SCREENSHOT=path.png`` to keep a screenshot of the page with a result.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import running_server
from cxr.labels import FINDINGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a server and a browser

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SAMPLE = "00000013_003.png"


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CXR_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " and CXR_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    import torch

    from cxr.inference.serve import create_app
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(11)
    model = create_model("resnet18", len(FINDINGS), input_size=64, labels=list(FINDINGS))
    thresholds = {finding: 0.3 + 0.03 * k for k, finding in enumerate(FINDINGS)}
    checkpoint = write_artifact(
        tmp_path_factory.mktemp("browser") / "tiny.ckpt",
        model,
        list(FINDINGS),
        make_preprocessing(model, 64, 0.9),
        thresholds,
    )
    with running_server(create_app(checkpoint)) as url:
        yield url


@pytest.fixture
def page(chromium_path, server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.set_default_timeout(60_000)  # a busy 2-core CI machine
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(server_url)
        yield page
        browser.close()
    # The page's content security policy allows only its own origin: nothing it does may be blocked by it.
    assert not [text for text in console if "Content Security Policy" in text], console


def test_upload_shows_bars_and_heatmaps(page, server_url, sample_dir, tmp_path):
    import httpx

    image = sample_dir / "images" / SAMPLE
    expected = httpx.post(f"{server_url}/api/predict", files={"file": (SAMPLE, image.read_bytes())}, timeout=60).json()

    page.wait_for_selector("#model-card dt")
    assert "not a medical device" in page.inner_text("#disclaimer").lower()
    assert "resnet18" in page.inner_text("#model-card")

    page.set_input_files("#file-input", str(image))
    from playwright.sync_api import expect

    rows = page.locator("#findings li.finding")
    expect(rows).to_have_count(
        14, timeout=60_000
    )  # not wait_for_function: the page's content security policy forbids eval
    shown = {
        rows.nth(i).get_attribute("data-finding"): float(rows.nth(i).get_attribute("data-probability"))
        for i in range(14)
    }
    assert shown == pytest.approx(expected["probabilities"], abs=1e-9)
    order = [float(rows.nth(i).get_attribute("data-probability")) for i in range(14)]
    assert order == sorted(order, reverse=True)  # sorted by probability
    positives = [
        rows.nth(i).get_attribute("data-finding")
        for i in range(14)
        if "is-positive" in rows.nth(i).get_attribute("class")
    ]
    assert sorted(positives) == sorted(expected["positive"])
    summary = page.inner_text("#summary")
    assert (f"{len(positives)} finding(s)" in summary) if positives else ("No finding" in summary)
    first = rows.nth(0)
    label = first.get_attribute("data-finding")
    mark_left = first.locator(".threshold-mark").evaluate("m => m.style.left")
    assert float(mark_left.rstrip("%")) == pytest.approx(100 * expected["thresholds"][label], abs=0.06)
    fill_width = first.locator(".fill").evaluate("f => f.style.width")
    assert float(fill_width.rstrip("%")) == pytest.approx(100 * expected["probabilities"][label], abs=0.06)
    assert page.locator("#preview-image").evaluate("img => img.complete && img.naturalWidth") == 512

    # Heatmap of the most probable finding: on, then off.
    overlay = page.locator("#heatmap-overlay")
    assert overlay.is_hidden()
    first.locator(".cam-toggle").click()
    page.wait_for_selector("#heatmap-overlay:not([hidden])")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert first.locator(".cam-toggle").get_attribute("aria-pressed") == "true"
    assert label.replace("_", " ") in page.inner_text("#heatmap-caption")
    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("CXR_SCREENSHOT"):
        page.screenshot(path=os.environ["CXR_SCREENSHOT"], full_page=True)
    first.locator(".cam-toggle").click()
    page.wait_for_selector("#heatmap-overlay[hidden]", state="attached")

    # The least probable finding's heatmap is fetched on demand; switching shows exactly one overlay.
    last = rows.nth(13)
    last.locator(".cam-toggle").click()
    page.wait_for_selector("#heatmap-overlay:not([hidden])")
    assert last.locator(".cam-toggle").get_attribute("aria-pressed") == "true"
    assert page.locator(".cam-toggle[aria-pressed='true']").count() == 1
    assert page.locator("#error").is_hidden()


def test_a_bad_file_shows_an_error(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a radiograph")
    page.wait_for_selector("#model-card dt")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "415" in text and "notes.png" in text
    assert page.locator("#findings li").count() == 0


KEY = "browser-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server_url(tmp_path_factory) -> str:
    from conftest import tiny_checkpoint
    from cxr.inference.serve import create_app

    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("browser-keyed") / "tiny.ckpt")
    with running_server(create_app(checkpoint, api_keys=[KEY])) as url:
        yield url


def test_the_page_asks_for_the_api_key_once(chromium_path, keyed_server_url, sample_dir):
    """A server with keys: the page asks when the API answers 401, asks again for a refused key, keeps the right one
    for the tab (a reload does not ask again) and sends it with every call."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=LAUNCH_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(keyed_server_url)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        assert "needs an API key" in page.inner_text("#key-message")
        page.fill("#key-input", "a-wrong-key-of-enough-length")
        page.click("#key-submit")
        expect(page.locator("#key-message")).to_contain_text("not accepted")
        expect(dialog).to_be_visible()
        page.fill("#key-input", KEY)
        page.click("#key-submit")
        expect(dialog).to_be_hidden()
        page.wait_for_selector("#model-card dt")
        assert page.evaluate("sessionStorage.getItem('cxr-api-key')") == KEY

        page.set_input_files("#file-input", str(sample_dir / "images" / SAMPLE))
        expect(page.locator("#findings li.finding")).to_have_count(14, timeout=60_000)
        assert page.locator("#error").is_hidden()

        page.reload()
        page.wait_for_selector("#model-card dt")
        assert dialog.is_hidden()  # kept for the tab: not asked again
        browser.close()
