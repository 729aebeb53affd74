"""The FastAPI application: `create_app(settings)` builds it; the model loads in `lifespan`."""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, AsyncIterator, BinaryIO

from anyio import to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service import __version__, memory
from service.audio import AudioError, AudioTooLongError
from service.batching import BatchScheduler
from service.config import Settings, is_loopback
from service.docs import add_docs
from service.inference import Classifier
from service.limits import QueueFull, UploadLimits, UploadQueue
from service.live import live_input
from service.live import router as live_router
from service.metrics import CONTENT_TYPE_LATEST, CountRequests, Metrics
from service.schemas import ClassifyResponse, ErrorMessage, Health, StreamOptions, describe_errors
from service.security import Guard, public_card
from service.stream import FileResult, StreamConfig, classify_file
from service.websocket import router as websocket_router

log = logging.getLogger(__name__)

SPOOL_MEMORY_BYTES = 1 << 20  # as Starlette spools multipart files: larger bodies go to a temporary file
BOMB_GRACE_S = 60.0  # uploads up to this long are never refused for holding too few bytes per second

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


class JobCancelled(Exception):
    """An upload's classification was abandoned (the service is stopping): the worker thread stops early."""


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def create_app(settings: Settings | None = None, classifier: Classifier | None = None) -> FastAPI:
    """Build the service. A classifier may be passed in (tests); otherwise `settings.model_path` is loaded.

    Raises ValueError when settings.api_key_file cannot be read."""
    settings = settings or Settings()
    key = settings.key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        memory.limit_arenas()  # before the worker threads start, each of which would get an arena
        app.state.classifier = classifier or Classifier(settings.model_path, intra_op_num_threads=settings.intra_op_threads)
        log.info("serving model %s", app.state.classifier.card.get("name", "?"))
        _warn_if_exposed(settings, key)
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
        openapi_url=None,  # these three are service.docs's: served from the package, no CDN
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.streams_open = 0
    app.state.uploads = UploadQueue(settings.max_rest_jobs, settings.max_rest_queue, app.state.metrics)
    app.add_middleware(UploadLimits, max_bytes=settings.max_upload_bytes, timeout_s=settings.upload_timeout_s,
                       limit_text=settings.upload_bytes_limit_text())
    app.add_middleware(Guard, hosts=settings.hosts(), origins=settings.allowed_origins, key=key,
                       metrics=app.state.metrics)
    app.add_middleware(CountRequests, metrics=app.state.metrics)  # outermost: refusals are counted too
    app.include_router(websocket_router)
    app.include_router(live_router)
    _add_http_routes(app)
    _add_web_page(app)
    add_docs(app)
    return app


def _warn_if_exposed(settings: Settings, key: str | None) -> None:
    if is_loopback(settings.host):
        return
    if key is None:
        log.warning("listening on %s without a key: anyone who can reach this port can use the service "
                    "(set SWISHNET_API_KEY or SWISHNET_API_KEY_FILE; see the README's Security section)",
                    settings.host)
    log.info("answering to the host names %s (SWISHNET_ALLOWED_HOSTS)", ", ".join(settings.hosts()))


@asynccontextmanager
async def _upload(request: Request) -> AsyncIterator[tuple[BinaryIO, str | None, int]]:
    """The audio of a raw body or of a multipart `file` field, spooled (to disk past SPOOL_MEMORY_BYTES),
    its filename and its size in bytes."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:  # closes the spooled files on exit
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart upload has no file field named 'file'")
            yield upload.file, upload.filename, upload.size or 0
        return
    with tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES) as body:
        try:
            async for chunk in request.stream():
                body.write(chunk)
        except OSError as error:  # the spool's disk (a tmpfs in the container) is full
            log.warning("cannot spool an upload: %s", error)
            raise HTTPException(503, "the service has no room to hold this upload now; retry later",
                                {"Retry-After": "10"}) from None
        size = body.tell()
        body.seek(0)
        yield body, None, size


async def _classify_upload(request: Request, uploads: UploadQueue, config: StreamConfig, settings: Settings,
                           classifier: Classifier, metrics: Metrics) -> FileResult:
    """Spool the upload, then classify it in a worker thread when its turn comes."""
    started = time.perf_counter()
    async with _upload(request) as (audio, filename, size):
        limit_s = _duration_limit(size, settings)
        cancelled = threading.Event()

        def progress(done_s: float, total_s: float) -> None:
            if cancelled.is_set():
                raise JobCancelled()

        job = functools.partial(classify_file, audio, classifier, config, file=filename, max_duration_s=limit_s,
                                progress=progress)
        try:
            result = await uploads.run(job)
        except AudioTooLongError as error:
            raise _too_long(error, size, limit_s, settings) from None
        except AudioError as error:
            raise HTTPException(400, str(error)) from None
        except BaseException:
            cancelled.set()  # the request was cancelled (the service is stopping): its thread stops soon
            raise
    metrics.inference_seconds.labels("rest").observe(time.perf_counter() - started)
    metrics.audio_seconds.labels("rest").inc(result.duration_s)
    return result


def _duration_limit(size_bytes: int, settings: Settings) -> float:
    """The longest audio an upload of ``size_bytes`` may hold: a small file that decodes to hours costs
    hours of decoding (a decompression bomb)."""
    if settings.min_upload_bytes_per_s <= 0:
        return settings.max_upload_duration_s
    return min(settings.max_upload_duration_s, max(BOMB_GRACE_S, size_bytes / settings.min_upload_bytes_per_s))


def _too_long(error: AudioTooLongError, size_bytes: int, limit_s: float, settings: Settings) -> HTTPException:
    if limit_s >= settings.max_upload_duration_s:
        return HTTPException(413, str(error))
    return HTTPException(413, f"{error}: {size_bytes} bytes of upload may hold at most {limit_s:.0f} s of audio "
                              f"({settings.min_upload_bytes_per_s:g} bytes per second past the first "
                              f"{BOMB_GRACE_S:g} s); such a file would cost minutes of CPU (a decompression bomb?)")


def _add_web_page(app: FastAPI) -> None:
    """The browser page at / and its files under /web/ (shipped in the package: no build step)."""
    web = StaticFiles(packages=[("service", "web")])
    app.mount("/web", web, name="web")
    index = Path(web.all_directories[0]) / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index)


def _add_http_routes(app: FastAPI) -> None:
    errors = {code: {"model": ErrorMessage} for code in (400, 401, 403, 408, 413, 422, 503)}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        """422 with a one-line `detail`, the shape of every other error (ErrorMessage)."""
        return JSONResponse({"detail": describe_errors(error.errors())}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> JSONResponse:
        """A client that leaves during its upload: nobody to answer, nothing to report but a line."""
        log.info("client left during its upload to %s", request.url.path)
        return JSONResponse({"detail": "the client left before its upload ended"}, status_code=400)

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
        uploads: UploadQueue = request.app.state.uploads
        try:
            async with uploads.admit():
                result = await _classify_upload(request, uploads, config, settings, classifier, metrics)
        except QueueFull as full:
            raise HTTPException(503, f"the service is busy: {uploads.capacity} uploads are already in hand; "
                                     f"retry in {full.retry_after_s} s",
                                {"Retry-After": str(full.retry_after_s)}) from None
        finally:
            if uploads.admitted == 0:  # the last upload in hand: give the memory it took back
                await to_thread.run_sync(memory.trim)
        return ClassifyResponse(**result.to_dict())

    @app.get("/v1/model", summary="The loaded model's card")
    async def model_card(classifier: Annotated[Classifier, Depends(get_classifier)]) -> dict:
        """Labels, feature parameters, training data summary and measured accuracy of the served model."""
        return public_card(classifier.card)

    @app.get("/healthz", response_model=Health, summary="Liveness and readiness")
    async def health(request: Request) -> Health:
        return Health(model=request.app.state.classifier.card.get("name", "?"),
                      streams_open=request.app.state.streams_open)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint(metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

