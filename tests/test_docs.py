"""The API docs at /docs render from the package's own files: offline, and under default-src 'self'."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.conftest import make_signal
from tests.live_server import LiveServer
from tests.test_web import browser_page, needs_chromium, save_screenshot, write_wav

STRICT_CSP = b"default-src 'self'"


class StrictCsp:
    """Sends ``Content-Security-Policy: default-src 'self'`` with every response (replacing any the service
    sends), so that this test does not depend on the service's own policy being as strict."""

    def __init__(self, app) -> None:
        self.app = app
        self.state = app.state  # tests.live_server reads the settings there

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_policy(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != b"content-security-policy"]
                message = {**message, "headers": [*headers, (b"content-security-policy", STRICT_CSP)]}
            await send(message)

        await self.app(scope, receive, send_with_policy)


@pytest.fixture(scope="module")
def server(classifier):
    with LiveServer(StrictCsp(create_app(Settings(), classifier=classifier))) as live:
        yield live


def test_docs_page_uses_only_the_services_files(server):
    page = httpx.get(f"{server.http}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text and "<script>" not in page.text  # nothing from elsewhere, no inline script
    for path in ("docs/swagger-ui/swagger-ui-bundle.js", "docs/swagger-ui/swagger-ui.css", "web/docs.js",
                 "openapi.json"):
        assert f'"{path}"' in page.text
        assert httpx.get(f"{server.http}/{path}").status_code == 200
    assert httpx.get(f"{server.http}/redoc").status_code == 404  # FastAPI's, from a CDN, is off


def test_docs_and_schema_are_named_in_metrics(server):
    httpx.get(f"{server.http}/docs")
    httpx.get(f"{server.http}/openapi.json")
    metrics = httpx.get(f"{server.http}/metrics").text
    assert 'swishnet_requests_total{route="/docs",status="200"}' in metrics
    assert 'swishnet_requests_total{route="/openapi.json",status="200"}' in metrics


@needs_chromium
def test_docs_render_without_network(server, tmp_path):
    """Every request that leaves the service is refused; Swagger UI must still draw the operations."""
    outside, refused = [], []
    silent_mic = write_wav(tmp_path / "silence.wav", make_signal("silence", 1.0), 16_000)
    with browser_page(silent_mic, tmp_path / "profile") as page:
        def offline(route) -> None:
            if route.request.url.startswith(server.http + "/"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort("internetdisconnected")

        page.route("**/*", offline)
        page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in
                message.text else None)
        page.goto(f"{server.http}/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "SwishNet Live" in page.text_content(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/classify']")
        paths = {element.get_attribute("data-path") for element in page.query_selector_all(".opblock-summary-path")}
        assert {"/v1/classify", "/v1/model", "/healthz", "/metrics"} <= paths
        page.click(".opblock-summary-path[data-path='/v1/classify']")  # opens: parameters drawn by the script
        page.wait_for_selector(".opblock.is-open .parameters-container")
        save_screenshot(page, tmp_path, "docs-offline")
    assert outside == []
    assert not [text for text in refused if "script" in text or "stylesheet" in text], refused
