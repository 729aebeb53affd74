"""The web page end to end: headless Chromium with a fake microphone playing generated audio.

Chromium is the system's (Debian package chromium), driven by Playwright;
Playwright never downloads a browser here. The tiny test model separates all
four generated kinds; music and noise are used, being the two most unlike.
Screenshots go to the test's tmp_path and, when SWISHNET_ARTIFACTS is set,
into that directory too.
"""

from __future__ import annotations

import json
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


def download(page: Page, selector: str) -> tuple[str, str]:
    """The name and text of the file a download link gives."""
    with page.expect_download() as info:
        page.click(selector)
    return info.value.suggested_filename, Path(info.value.path()).read_text(encoding="utf-8")


@needs_chromium
def test_file_result_axis_legend_downloads_and_errors(server, tmp_path, tiny_model_path, capsys):
    """The file's timeline has a time axis and a legend beside it; its result downloads as the classify
    command writes it (JSON, CSV, TextGrid); a file that fails hides the previous file's result."""
    from service.cli import main

    scene = np.concatenate([make_signal("noise", 2.0), make_signal("music", 2.5), make_signal("silence", 1.5),
                            make_signal("noise", 2.0, seed=1)])
    upload = write_wav(tmp_path / "scene.wav", scene, 16_000)
    expected = {}
    for fmt in ("json", "csv", "textgrid"):
        assert main(["classify", str(upload), "--model", str(tiny_model_path), "--format", fmt]) == 0
        expected[fmt] = capsys.readouterr().out.replace(str(upload), "scene.wav")
    broken = tmp_path / "notes.wav"
    broken.write_bytes(b"RIFF not really a wave file" * 10)
    silent_mic = write_wav(tmp_path / "silence.wav", make_signal("silence", 1.0), 16_000)
    with browser_page(silent_mic, tmp_path / "profile") as page:
        open_page(page, server.http + "/")
        page.set_input_files("#file-input", str(upload))
        page.wait_for_selector("#file-segments li")
        ticks = [tick.text_content() for tick in page.query_selector_all("#file-axis .tick")]
        assert ticks == ["0 s", "2 s", "4 s", "6 s", "8 s"]
        legend = [item.get_attribute("data-label") for item in page.query_selector_all("#file-result .legend li")]
        assert legend == ["speech", "music", "noise", "silence"]
        assert page.is_visible("#file-result .legend")
        save_screenshot(page, tmp_path, "web-file-result")
        name, text = download(page, "#download-json")
        assert name == "scene.json" and json.loads(text) == json.loads(expected["json"])
        assert download(page, "#download-csv") == ("scene.csv", expected["csv"])
        assert download(page, "#download-textgrid") == ("scene.TextGrid", expected["textgrid"])
        page.set_input_files("#file-input", str(broken))
        page.wait_for_selector("#file-status:has-text('notes.wav: cannot decode audio')")
        assert page.is_hidden("#file-result") and page.is_hidden("#file-timeline")
        assert page.is_hidden("#download-csv")
        assert_no_csp_violation(page)


@needs_chromium
def test_stopping_the_microphone_clears_now(server, tmp_path):
    sound = np.concatenate([make_signal("music", 3.0, sample_rate=FAKE_MIC_RATE),
                            make_signal("silence", 1.5, sample_rate=FAKE_MIC_RATE)])
    wav = write_wav(tmp_path / "music.wav", sound, FAKE_MIC_RATE)
    with browser_page(wav, tmp_path / "profile") as page:
        open_page(page, server.http + "/")
        page.click("#mic-button")
        page.wait_for_selector("#live-label[data-label=music]")
        page.wait_for_selector("#live-axis .tick")
        times = [float(tick.get_attribute("data-time")) for tick in page.query_selector_all("#live-axis .tick")]
        assert times and all(t % 10 == 0 for t in times)  # spaced for the whole minute, not the seconds heard
        legend = [item.get_attribute("data-label") for item in page.query_selector_all("#mic-heading ~ * .legend li")]
        assert legend == ["speech", "music", "noise", "silence"]  # beside the live timeline
        page.click("#mic-button")
        page.wait_for_selector("#mic-button[aria-pressed=false]")
        page.wait_for_timeout(1000)  # late events of the stopped stream (its last segment) must not bring it back
        assert page.get_attribute("#live-label", "data-label") == ""
        assert page.text_content("#live-label") == "—" and page.text_content("#live-time") == ""
        values = [bar.get_attribute("aria-valuenow") for bar in page.query_selector_all("#live-probs .bar")]
        assert values == ["0.00"] * 3
        assert_no_csp_violation(page)


@needs_chromium
def test_segment_list_follows_the_newest_entry(server, tmp_path):
    """The live list keeps its newest segment in view as it grows, unless the reader scrolled up; long lists
    are not cut off at the left (their numbers sit inside the box)."""
    silent_mic = write_wav(tmp_path / "silence.wav", make_signal("silence", 1.0), 16_000)
    draw = """(count) => {
        const segments = Array.from({length: count}, (_, i) => ({start: i, end: i + 1, label: "music",
                                                                  confidence: 0.9}));
        drawTimeline($("live-timeline"), $("live-axis"), $("live-segments"), segments, 0, count);
        const list = $("live-segments");
        return {top: list.scrollTop, bottom: list.scrollHeight - list.clientHeight};
    }"""
    with browser_page(silent_mic, tmp_path / "profile") as page:
        open_page(page, server.http + "/")
        first = page.evaluate(draw, 120)
        assert first["bottom"] > 0 and first["top"] == first["bottom"]  # scrolled to the newest
        grown = page.evaluate(draw, 121)
        assert grown["top"] == grown["bottom"] > first["bottom"]  # follows it
        page.evaluate("$('live-segments').scrollTop = 0")  # the reader scrolls up ...
        assert page.evaluate(draw, 122)["top"] == 0  # ... and the list stays where they are
        box = page.evaluate("""() => {
            const list = $("live-segments").getBoundingClientRect();
            const item = $("live-segments").lastElementChild.getBoundingClientRect();
            return {inside: item.left >= list.left && item.right <= list.right,
                    marker: getComputedStyle($("live-segments")).listStylePosition};
        }""")
        assert box == {"inside": True, "marker": "inside"}
        assert_no_csp_violation(page)
