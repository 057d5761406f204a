"""The demo page in a real browser (headless Chromium driven by Playwright) against real Triton.

The page's server calls the session's token-protected Triton (the exported tiny model) through
detstack's client; the browser only ever talks to the page's server.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo import DemoConfig, create_app
from tests.fixtures.models import tiny_shape_image
from tests.fixtures.triton import TRITON_TEST_TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.triton, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; "
        ".ci/run does it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def page_server(triton_server_with_token):
    # The default allow-list names Triton's usual ports; the pre-filled endpoint is allowed too.
    server = create_app(
        DemoConfig(
            port=0,
            timeout_s=30.0,
            default_endpoint=f"grpc://{triton_server_with_token.endpoints.grpc}",
        )
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, page_server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(page_server.url)
    page.wait_for_selector("body[data-state=ready]")
    yield page
    context.close()


@pytest.fixture(scope="module")
def shapes_png(tmp_path_factory) -> Path:
    image, _, _ = tiny_shape_image(np.random.default_rng(3), max_shapes=2)
    path = tmp_path_factory.mktemp("upload") / "shapes.png"
    Image.fromarray(image).resize((256, 256), Image.NEAREST).save(path)
    return path


def _fill(page, server, token: str, image: Path, threshold: str = "0.5") -> None:
    page.fill("#endpoint", f"grpc://{server.endpoints.grpc}")
    page.fill("#token", token)
    page.set_input_files("#image", str(image))
    page.eval_on_selector("#threshold", f"(el) => {{ el.value = '{threshold}'; }}")
    page.click("#submit")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=60_000)


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / name, SCREENSHOTS / name)


def test_uploading_an_image_draws_the_detected_boxes_with_names_scores_and_latency(
    page, triton_server_with_token, shapes_png, tmp_path
):
    _fill(page, triton_server_with_token, TRITON_TEST_TOKEN, shapes_png)
    _screenshot(page, tmp_path, "demo-detections.png")
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
    count = int(page.get_attribute("#canvas", "data-detections"))
    assert count >= 1
    rows = page.locator("#detections tbody tr")
    assert rows.count() == count
    first = rows.nth(0).inner_text()
    assert any(name in first for name in ("red", "green", "blue"))
    assert "ms Triton round trip" in page.inner_text("#latency")
    # The box is really drawn: canvas pixels in the first detection's colour exist.
    coloured = page.evaluate(
        """() => {
            const canvas = document.getElementById('canvas');
            const swatch = document.querySelector('#detections .swatch');
            const [r, g, b] = getComputedStyle(swatch).backgroundColor.match(/\\d+/g).map(Number);
            const context = canvas.getContext('2d');
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let hits = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === r && data[i + 1] === g && data[i + 2] === b) hits++;
            }
            return hits;
        }"""
    )
    assert coloured > 50


def test_a_wrong_token_shows_the_token_error(page, triton_server_with_token, shapes_png, tmp_path):
    _fill(page, triton_server_with_token, "not-the-right-token-at-all", shapes_png)
    _screenshot(page, tmp_path, "demo-wrong-token.png")
    assert page.get_attribute("body", "data-state") == "error"
    assert page.get_attribute("body", "data-error-kind") == "unauthorized"
    assert page.inner_text("#error-title") == "API token refused"
    assert page.is_hidden("#canvas")
    assert "not-the-right-token-at-all" not in page.inner_text("#result")


def test_error_texts_are_shown_as_text_never_as_html(page, triton_server_with_token, tmp_path):
    hostile = tmp_path / "<img src=x onerror=window.pwned=1>.png"
    hostile.write_bytes(b"definitely not an image")
    _fill(page, triton_server_with_token, TRITON_TEST_TOKEN, hostile)
    assert page.get_attribute("body", "data-error-kind") == "bad_image"
    assert "<img src=x onerror=window.pwned=1>" in page.inner_text("#error-message")
    assert page.locator("#error img").count() == 0
    assert page.evaluate("() => window.pwned === undefined")


def test_the_token_is_not_kept_by_the_browser(page, triton_server_with_token, shapes_png):
    _fill(page, triton_server_with_token, TRITON_TEST_TOKEN, shapes_png)
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    assert page.context.cookies() == []
    assert page.get_attribute("#token", "autocomplete") == "new-password"
