"""The FastAPI app: ``POST /v1/detect``, ``GET /v1/model``, ``/healthz``, ``/metrics`` and the page.

``create_app(load, ...)`` takes a loader returning a :class:`ServedModel`; the model loads on a
thread when the app starts, and ``/healthz`` answers 200 only once it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.reduced import full_size
from .batcher import DetectFn, DynamicBatcher, QueueFull
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .schemas import (
    DETECT_OPENAPI,
    ApiError,
    Detection,
    DetectResponse,
    ImageSize,
    ModelInfo,
    Timing,
    apply_options,
    parse_options,
)
from .uploads import decode_upload, read_upload

_log = logging.getLogger(__name__)

__all__ = ["ServeLimits", "ServedModel", "create_app"]

_PATHS = frozenset({"/", "/healthz", "/metrics", "/v1/detect", "/v1/model"})


@dataclass(frozen=True)
class ServedModel:
    """What the app needs of a loaded model, whichever backend runs it."""

    detect: DetectFn  # uint8 [3, H, W] images, score threshold -> Detector-style dicts
    name: str
    image_size: tuple[int, int]  # model input (height, width)
    num_classes: int
    class_names: list[str] | None
    backend: str
    max_input_pixels: int
    decode_size: tuple[int, int] | None = None  # the detector's: large JPEG uploads decoded reduced for it
    min_score_threshold: float = 0.0  # an ONNX graph with NMS inside drops lower scores itself
    min_image_side: int = 0  # --tile: sliced inference needs images at least one tile on each side
    mixed_thresholds: bool = True  # False: one threshold per forward pass (box fusion)


@dataclass(frozen=True)
class ServeLimits:
    """Batching, queue and upload limits, and the default score threshold."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_bytes: int = 20 * 1024 * 1024
    score_threshold: float = 0.3
    retry_after_s: int = 1
    decode_workers: int = 2


class _Service:
    """One app's state: the model (once loaded), the batcher, the decoding threads, metrics."""

    def __init__(self, load: Callable[[], ServedModel], limits: ServeLimits,
                 on_load_error: Callable[[BaseException], None] | None) -> None:  # fmt: skip
        self.load = load
        self.limits = limits
        self.on_load_error = on_load_error
        self.model: ServedModel | None = None
        self.load_error: str | None = None
        self.batcher = DynamicBatcher(
            self._detect, limits.max_batch, limits.max_wait_ms / 1000.0, limits.max_queue, self._on_batch
        )
        self.metrics = ServeMetrics(limits.max_batch, lambda: self.batcher.depth, lambda: self.batcher.admitted)
        self.decoders = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="decode")

    def _detect(self, images: list[Any], threshold: float) -> list[dict[str, Any]]:
        assert self.model is not None
        return self.model.detect(images, threshold)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe_batch(size, seconds)

    async def load_model(self) -> None:
        try:
            self.model = await asyncio.to_thread(self.load)
            self.batcher.mixed_thresholds = self.model.mixed_thresholds  # no batch runs before this
        except Exception as exc:  # deliberately broad: reported by /healthz and the callback
            self.load_error = f"{type(exc).__name__}: {exc}"
            if self.on_load_error is not None:
                self.on_load_error(exc)

    def ready_model(self) -> ServedModel:
        if self.model is None:
            state = f"failed to load ({self.load_error})" if self.load_error else "still loading"
            raise ApiError(503, "not_ready", f"the model is {state}", {"Retry-After": str(self.limits.retry_after_s)})
        return self.model


def create_app(
    load: Callable[[], ServedModel],
    limits: ServeLimits | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The service's ASGI app; ``load()`` runs on a thread at startup (``on_load_error`` is
    called if it raises: the CLI stops the server then)."""
    service = _Service(load, limits or ServeLimits(), on_load_error)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        loading = asyncio.create_task(service.load_model())
        try:
            yield
        finally:  # uvicorn has finished the requests in flight by now
            await loading
            await service.batcher.stop()
            service.decoders.shutdown(wait=True)

    app = FastAPI(title="efficientdet", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    _add_handlers(app, service)
    _add_routes(app, service)
    return app


def _add_handlers(app: FastAPI, service: _Service) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing's own 404/405 in the documented error format (were {"detail": "Not Found"}).
        path = request.url.path
        if exc.status_code == 404:
            error = ApiError(404, "not_found", f"no such path: {path} (the API: POST /v1/detect, GET /v1/model, /healthz, /metrics)")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {path} (use {allowed})")
        else:
            error = ApiError(exc.status_code, "http_error", str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in _PATHS else "other"
        service.metrics.observe_request(path, response.status_code, time.perf_counter() - start)
        return response


def _add_routes(app: FastAPI, service: _Service) -> None:
    page = resources.files("efficientdet.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    # HEAD too on the page and the health check: uptime monitors and load balancers probe with it
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if service.model is None:
            status = "failed" if service.load_error else "loading"
            return JSONResponse({"status": status, "error": service.load_error}, status_code=503)
        return JSONResponse({"status": "ok", "model": service.model.name})

    # HEAD as its own route, left out of the schema: one route with both methods gave GET and HEAD
    # the same operationId (FastAPI warned; OpenAPI requires unique ones)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo)
    async def model_info() -> ModelInfo:
        m, lim = service.ready_model(), service.limits
        classes = list(m.class_names) if m.class_names else [str(i) for i in range(m.num_classes)]
        return ModelInfo(
            name=m.name, classes=classes, num_classes=m.num_classes, input_size=list(m.image_size),
            backend=m.backend, max_batch=lim.max_batch, max_input_pixels=m.max_input_pixels,
            max_upload_bytes=lim.max_upload_bytes, default_score_threshold=lim.score_threshold,
            min_score_threshold=m.min_score_threshold,
        )  # fmt: skip

    @app.post("/v1/detect", response_model=DetectResponse, openapi_extra=DETECT_OPENAPI)
    async def detect(request: Request) -> DetectResponse:
        model = service.ready_model()
        try:
            with service.batcher.slot():
                return await _detect_one(request, service, model)
        except QueueFull as exc:
            headers = {"Retry-After": str(service.limits.retry_after_s)}
            raise ApiError(503, "queue_full", f"the server is busy: {exc}; retry later", headers) from None
        except ApiError:
            raise
        except Exception as exc:  # deliberately broad: a JSON answer (and a logged traceback), not plain text
            _log.exception("detect failed")
            raise ApiError(500, "internal_error", f"the detector failed on this image: {type(exc).__name__}: {exc}") from exc


async def _detect_one(request: Request, service: _Service, model: ServedModel) -> DetectResponse:
    """Read, check, decode (on a thread), batch, answer: one detect request."""
    start = time.perf_counter()
    data, fields = await read_upload(request, service.limits.max_upload_bytes)
    options = parse_options(
        fields, model.class_names, model.num_classes, service.limits.score_threshold, model.min_score_threshold
    )
    loop = asyncio.get_running_loop()
    image = await loop.run_in_executor(service.decoders, decode_upload, data, model.max_input_pixels, model.decode_size)
    h, w = full_size(image)
    if min(h, w) < model.min_image_side:  # else its batch failed: a 500 for every request in it
        message = f"the image is {w}x{h} pixels, smaller than this server's --tile {model.min_image_side} on a side"
        raise ApiError(422, "image_too_small", message)
    decoded = time.perf_counter()
    det = apply_options(await service.batcher.submit(image, options.score_threshold), options)
    done = time.perf_counter()
    names = det.get("names") or [None] * len(det["scores"])
    detections = [
        Detection(box=box, score=score, label=label, name=name)
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), names)
    ]
    return DetectResponse(
        model=model.name,
        image=ImageSize(width=w, height=h),
        detections=detections,
        time=Timing(
            decode_ms=1000 * (decoded - start), inference_ms=1000 * (done - decoded), total_ms=1000 * (done - start)
        ),
    )
