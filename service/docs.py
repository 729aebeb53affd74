"""The API docs at /docs, served from installed files.

FastAPI's own /docs loads Swagger UI from a CDN (blank without internet) and
starts it with an inline script (refused under a Content-Security-Policy of
``default-src 'self'``). Here Swagger UI's files come from the
fastapi-offline package (under /docs/swagger-ui/) and a small file of ours,
web/docs.js, starts it. Every URL in the page is relative, so the docs also
work behind a proxy that serves the service under a path prefix. /openapi.json
and /docs are routes of the app like the API's (so metrics name them).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
SWAGGER_UI_PATH = "/docs/swagger-ui"
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="stylesheet" href="docs/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/swagger-ui/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="docs/swagger-ui/swagger-ui-bundle.js"></script>
<script src="web/docs.js"></script>
</body>
</html>
"""


def swagger_ui_files() -> str:
    """The folder of Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css) in the installed package."""
    return str(files("fastapi_offline") / "static")


def add_docs(app: FastAPI) -> None:
    """GET /openapi.json, /docs and Swagger UI's files; build the app with
    ``openapi_url=None, docs_url=None, redoc_url=None`` (FastAPI's own would load from a CDN)."""
    app.mount(SWAGGER_UI_PATH, StaticFiles(directory=swagger_ui_files()), name="swagger-ui")
    page = DOCS_PAGE.format(title=app.title, openapi_url=OPENAPI_PATH.lstrip("/"))

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page)
