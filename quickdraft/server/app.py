"""The FastAPI application: routes, error handling, streaming. Build it with :func:`create_app`.

    engine = quickdraft.load()
    app = create_app(engine, "qwen2.5-coder-1.5b-instruct-iq4_nl", api_key="KEY")
    run(app, host="127.0.0.1", port=8000)

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream``),
``GET /v1/models``, ``GET /v1/models/{model}``, ``GET /health``, ``GET /metrics``. Every error is
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine
from .completions import Completions
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .middleware import ApiKeyAuth, BodySizeLimit, RequestCounter
from .protocol import APIError, internal_error, model_not_found, validation_error
from .scheduler import Scheduler
from .schemas import ChatCompletionRequest, CompletionRequest

DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_BATCH = 8

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
OPEN_PATHS = ("/health",)  # reachable without the API key


def create_app(engine_or_engines: Engine | Sequence[Engine], model_name: str | Sequence[str],
               api_key: str | None = None, *,
               max_queue: int = DEFAULT_MAX_QUEUE, timeout_s: float = DEFAULT_TIMEOUT_S,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
               prefill_chunk: int | None = None, step_time: float | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``model_name``: the model id clients pass as ``model``
    and ``/v1/models`` lists, or a sequence of names, that id first and then other names accepted
    for it (``models.served_names``: a ``.gguf`` file's name with and without the suffix).

    engine_or_engines: one Engine, or several replicas of the same model pair (each has its own
        llama.cpp context and worker thread; requests go to whichever has room).
    max_batch: requests an engine runs at once, in shared steps (continuous batching; backends
        that cannot batch run one). step_time: seconds a step carrying prompt tokens is predicted
        to take at most (default scheduler.DEFAULT_STEP_TIME), prompt tokens first, drafts in the
        time they leave; prefill_chunk: instead, prompt tokens prefilled a step (at most one of the two).
    api_key: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <api_key>``.
    max_queue: requests that may wait for an engine; beyond that the server answers 503.
    timeout_s: per request, from arrival (queueing included) to the last token; then 504 (or an
        error event in a stream that already started).
    max_body_bytes: larger request bodies get 413.
    Requests without ``max_tokens`` get the engine's default (``load(default_max_tokens=...)``,
    never beyond what fits the context).
    """
    engines = list(engine_or_engines) if isinstance(engine_or_engines, (list, tuple)) else [engine_or_engines]
    names = (model_name,) if isinstance(model_name, str) else tuple(model_name)
    model_id = names[0]
    metrics = Metrics()
    scheduler = Scheduler(engines, max_queue=max_queue, metrics=metrics, max_batch=max_batch,
                          prefill_chunk=prefill_chunk, step_time=step_time)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for engine in engines:  # read now, before the workers decode: it reads every token's bytes
            engine.vocabulary()
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="quickdraft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics = scheduler, metrics

    def count_error(error: APIError) -> None:
        metrics.errors.labels(str(error.status), error.code or error.type).inc()

    def error_response(error: APIError) -> JSONResponse:
        count_error(error)
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    # Middlewares: the last added runs first (count -> auth -> body size -> routes).
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, on_error=count_error)
    if api_key:
        app.add_middleware(ApiKeyAuth, api_key=api_key, open_paths=OPEN_PATHS, on_error=count_error)
    app.add_middleware(RequestCounter, count=lambda e, s: metrics.http_requests.labels(e, str(s)).inc(),
                       endpoints=ENDPOINTS)

    # --- errors --------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError):
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no endpoint {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404
                                       else None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        return error_response(internal_error())

    complete = Completions(scheduler, engines[0], model_names=names, timeout_s=timeout_s, on_error=count_error)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await complete(body, request, "chat")

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest, request: Request):
        return await complete(body, request, "text")

    # --- information ---------------------------------------------------------------------------
    created = int(time.time())
    model_card = {"id": model_id, "object": "model", "created": created, "owned_by": "quickdraft"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str):
        if model not in names:
            raise model_not_found(model, names)
        return model_card

    @app.get("/health")
    async def health():
        """200 while an engine can generate; 503 (for a load balancer's probe) once none can."""
        body = {"status": "error" if scheduler.down else "ok", "model": model_id, "engines": len(engines),
                "engines_failed": scheduler.failed, "queue_length": scheduler.waiting, "running": scheduler.running}
        return JSONResponse(body, status_code=503 if scheduler.down else 200)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
