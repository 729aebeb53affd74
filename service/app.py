"""The FastAPI application: `create_app(settings)` builds it; the model loads in `lifespan`."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, AsyncIterator, BinaryIO

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from service import __version__
from service.audio import AudioError, AudioTooLongError
from service.batching import BatchScheduler
from service.config import Settings
from service.inference import Classifier
from service.limits import BodySizeLimit
from service.live import live_input
from service.live import router as live_router
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.schemas import ClassifyResponse, ErrorMessage, Health, StreamOptions, describe_errors
from service.stream import classify_file
from service.websocket import router as websocket_router

log = logging.getLogger(__name__)

SPOOL_MEMORY_BYTES = 1 << 20  # as Starlette spools multipart files: larger bodies go to a temporary file

AUDIO_BODY_DOC = {
    "requestBody": {
        "description": "The audio file, as the raw body or as the multipart field `file`. "
        "WAV, FLAC, OGG (Vorbis, Opus) and MP3 at any sample rate and channel count.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def create_app(settings: Settings | None = None, classifier: Classifier | None = None) -> FastAPI:
    """Build the service. A classifier may be passed in (tests); otherwise `settings.model_path` is loaded."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.classifier = classifier or Classifier(settings.model_path, intra_op_num_threads=settings.intra_op_threads)
        app.state.rest_jobs = CapacityLimiter(settings.max_rest_jobs)  # streams keep anyio's default pool
        log.info("serving model %s", app.state.classifier.card.get("name", "?"))
        async with (BatchScheduler(app.state.classifier, settings.max_batch_frames) as app.state.scheduler,
                    live_input(settings, app.state.classifier, app.state.metrics) as app.state.live):
            yield

    app = FastAPI(
        title="SwishNet Live",
        version=__version__,
        description="Speech / music / noise / silence classification of audio files (REST) and live streams "
        "(WebSocket `/v1/stream`, protocol in the README; `/v1/live`: the server's own microphone, read-only). "
        "A web page at `/` classifies the browser's microphone or an uploaded file.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.streams_open = 0
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.include_router(websocket_router)
    app.include_router(live_router)
    _add_http_routes(app)
    _add_web_page(app)
    return app


@asynccontextmanager
async def _upload(request: Request) -> AsyncIterator[tuple[BinaryIO, str | None]]:
    """The audio of a raw body or of a multipart `file` field, spooled (to disk past SPOOL_MEMORY_BYTES),
    and its filename."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:  # closes the spooled files on exit
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart upload has no file field named 'file'")
            yield upload.file, upload.filename
        return
    with tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES) as body:
        async for chunk in request.stream():
            body.write(chunk)
        body.seek(0)
        yield body, None


def _add_web_page(app: FastAPI) -> None:
    """The browser page at / and its files under /web/ (shipped in the package: no build step)."""
    web = StaticFiles(packages=[("service", "web")])
    app.mount("/web", web, name="web")
    index = Path(web.all_directories[0]) / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index)


def _add_http_routes(app: FastAPI) -> None:
    errors = {code: {"model": ErrorMessage} for code in (400, 413, 422)}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        """422 with a one-line `detail`, the shape of every other error (ErrorMessage)."""
        return JSONResponse({"detail": describe_errors(error.errors())}, status_code=422)

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors, openapi_extra=AUDIO_BODY_DOC,
              summary="Classify an audio file")
    async def classify(
        request: Request,
        options: Annotated[StreamOptions, Query()],
        settings: Annotated[Settings, Depends(get_settings)],
        classifier: Annotated[Classifier, Depends(get_classifier)],
        metrics: Annotated[Metrics, Depends(get_metrics)],
    ) -> ClassifyResponse:
        """Segments and dominant class of the uploaded audio, as `swishnet classify --format json` prints them."""
        try:
            config = options.to_config()
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        started = time.perf_counter()
        async with _upload(request) as (audio, filename):
            try:
                job = functools.partial(classify_file, audio, classifier, config, file=filename,
                                        max_duration_s=settings.max_upload_duration_s)
                result = await to_thread.run_sync(job, limiter=request.app.state.rest_jobs)
            except AudioTooLongError as error:
                raise HTTPException(413, str(error)) from None
            except AudioError as error:
                raise HTTPException(400, str(error)) from None
        metrics.inference_seconds.labels("rest").observe(time.perf_counter() - started)
        metrics.audio_seconds.labels("rest").inc(result.duration_s)
        return ClassifyResponse(**result.to_dict())

    @app.get("/v1/model", summary="The loaded model's card")
    async def model_card(classifier: Annotated[Classifier, Depends(get_classifier)]) -> dict:
        """Labels, feature parameters, training data summary and measured accuracy of the served model."""
        return classifier.card

    @app.get("/healthz", response_model=Health, summary="Liveness and readiness")
    async def health(request: Request) -> Health:
        return Health(model=request.app.state.classifier.card.get("name", "?"),
                      streams_open=request.app.state.streams_open)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint(metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        route = request.scope.get("route")
        app.state.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response
