"""The web page end to end: headless Chromium with a fake microphone playing generated audio.

Chromium is the system's (Debian package chromium), driven by Playwright;
Playwright never downloads a browser here. The tiny test model separates all
four generated kinds; music and noise are used, being the two most unlike.
Screenshots go to the test's tmp_path and, when SWISHNET_ARTIFACTS is set,
into that directory too.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf

from service.app import create_app
from service.config import Settings
from tests.conftest import make_signal
from tests.live_server import LiveServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get("SWISHNET_CHROMIUM", "/usr/bin/chromium"))
FAKE_MIC_RATE = 48_000
TIMEOUT_MS = 20_000
CHROMIUM_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--no-sandbox",
                 "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

RECORD_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (event) => {
  (window.cspViolations = window.cspViolations || []).push(`${event.violatedDirective} ${event.blockedURI}`);
});"""
KEY = "page-key/with+odd=chars"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(classifier) -> Iterator[LiveServer]:
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        yield live


@contextmanager
def browser_page(microphone_wav: Path, profile_dir: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium whose fake microphone loops ``microphone_wav``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone_wav}"],
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.add_init_script(RECORD_CSP_VIOLATIONS)  # init scripts are not subject to the page's CSP
            yield page
        finally:
            context.close()


def open_page(page: Page, url: str) -> None:
    """Go to the page, which must come with the service's Content-Security-Policy."""
    response = page.goto(url)
    assert "default-src 'self'" in response.headers["content-security-policy"]


def assert_no_csp_violation(page: Page) -> None:
    """Everything the page did (scripts, the worklet, styles, WebSockets, fetches) was allowed by its CSP."""
    assert page.evaluate("window.cspViolations || []") == []


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    sf.write(path, audio, sample_rate, subtype="PCM_16")
    return path


def save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SWISHNET_ARTIFACTS"):
        artifacts = Path(os.environ["SWISHNET_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, artifacts / path.name)


def test_page_and_its_files_are_served(server):
    page = httpx.get(f"{server.http}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="web/app.js"' in page.text and 'href="web/style.css"' in page.text
    for name in ("app.js", "capture-worklet.js", "style.css"):  # app.js loads the worklet
        assert httpx.get(f"{server.http}/web/{name}").status_code == 200
    assert "/" not in httpx.get(f"{server.http}/openapi.json").json()["paths"]


@needs_chromium
@pytest.mark.parametrize("kind", ["music", "noise"])
def test_microphone_shows_the_live_label(server, tmp_path, kind):
    # Chromium loops the file: the pauses close segments
    sound = np.concatenate([make_signal(kind, 3.0, sample_rate=FAKE_MIC_RATE),
                            make_signal("silence", 1.5, sample_rate=FAKE_MIC_RATE)])
    wav = write_wav(tmp_path / f"{kind}.wav", sound, FAKE_MIC_RATE)
    with browser_page(wav, tmp_path / "profile") as page:
        open_page(page, server.http + "/")
        page.click("#mic-button")
        page.wait_for_selector(f"#live-label[data-label={kind}]")
        assert float(page.get_attribute(f"#live-probs .bar[aria-labelledby=prob-name-{kind}]", "aria-valuenow")) > 0.5
        page.wait_for_selector(f"#live-segments li[data-label={kind}]")
        assert "Listening" in page.text_content("#mic-status")
        save_screenshot(page, tmp_path, f"web-microphone-{kind}")
        page.click("#mic-button")  # stop: the button turns back
        page.wait_for_selector("#mic-button[aria-pressed=false]")
        assert_no_csp_violation(page)


@needs_chromium
def test_file_upload_draws_segments(server, tmp_path):
    scene = np.concatenate([make_signal("noise", 2.0), make_signal("music", 2.5), make_signal("silence", 1.5),
                            make_signal("noise", 2.0, seed=1)])
    upload = write_wav(tmp_path / "scene.wav", scene, 16_000)
    silent_mic = write_wav(tmp_path / "silence.wav", make_signal("silence", 1.0), 16_000)
    with browser_page(silent_mic, tmp_path / "profile") as page:
        open_page(page, server.http + "/")
        page.set_input_files("#file-input", str(upload))
        page.wait_for_selector("#file-segments li")
        labels = [item.get_attribute("data-label") for item in page.query_selector_all("#file-segments li")]
        assert labels == ["noise", "music", "silence", "noise"]
        assert len(page.query_selector_all("#file-timeline .block")) == 4
        assert "scene.wav: 8.0 s" in page.text_content("#file-status")
        assert_no_csp_violation(page)
        save_screenshot(page, tmp_path, "web-file")


@needs_chromium
def test_a_keyed_service_asks_for_its_key(classifier, tmp_path):
    """With SWISHNET_API_KEY set, the page asks for the key, then uses it: Bearer on fetches, the
    swishnet.key subprotocol on the microphone's WebSocket."""
    sound = np.concatenate([make_signal("music", 3.0, sample_rate=FAKE_MIC_RATE),
                            make_signal("silence", 1.5, sample_rate=FAKE_MIC_RATE)])
    wav = write_wav(tmp_path / "music.wav", sound, FAKE_MIC_RATE)
    with LiveServer(create_app(Settings(api_key=KEY), classifier=classifier)) as live, \
            browser_page(wav, tmp_path / "profile") as page:
        open_page(page, live.http + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#key-input", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-form:not([hidden])")  # refused: asked again
        assert "refused" in page.text_content("#key-status")
        page.fill("#key-input", KEY)
        page.click("#key-form button")
        page.wait_for_selector("#key-form[hidden]", state="attached")
        page.click("#mic-button")
        page.wait_for_selector("#live-label[data-label=music]")
        page.click("#mic-button")
        assert_no_csp_violation(page)
        save_screenshot(page, tmp_path, "web-keyed")
