"""The HTTP side: OpenAI's chat-completions API over the engine, plus /v1/models, /health,
/metrics and the web page at /."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from paddle_rc.serving.engine import Engine, Job, QueueFull
from paddle_rc.serving.metrics import server_metrics
from paddle_rc.serving.protocol import APIError, Compression, Limits, parse_chat_request, resolve_compression

log = logging.getLogger("paddle_rc.serve")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")
RETRY_AFTER_SECONDS = 1


def create_app(predictor, *, max_batch_size: int = 8, max_queue: int = 64, batch_window: float = 0.005,
               default_max_tokens: int = 256, limits: Optional[Limits] = None,
               threads: Optional[int] = None) -> FastAPI:
    limits = limits or Limits()
    engine = Engine(predictor, max_batch_size=max_batch_size, max_queue=max_queue, batch_window=batch_window,
                    default_max_tokens=default_max_tokens, threads=threads)
    metrics = server_metrics(lambda: engine.queue_depth, lambda: engine.active)
    engine.metrics = metrics
    model_id = predictor.model_id
    spec = predictor.compression
    current = Compression(spec.method, spec.budget, tuple(sorted(spec.options.items())))
    n_patches = (predictor.config.vision.image_size // predictor.config.vision.patch_size) ** 2

    from paddle_rc.compression import available_methods, method_defaults

    methods = available_methods()

    def lifespan(app):
        import contextlib

        @contextlib.asynccontextmanager
        async def run():
            engine.start()
            try:
                yield
            finally:
                engine.stop()
        return run()

    app = FastAPI(title="paddle_rc", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.metrics = engine, metrics

    # ---- errors: always OpenAI's shape -------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        msg = {404: f"no route {request.method} {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return _error_response(APIError(e.status_code, msg, type=kind))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("unhandled error")
        return _error_response(APIError(500, f"internal server error: {type(e).__name__}", type="server_error"))

    def _error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return HTMLResponse(f.read())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "kind": predictor.kind,
                "queue_depth": engine.queue_depth, "active_sequences": engine.active}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": int(STARTED), "owned_by": "paddle_rc",
                "paddle_rc": {"kind": predictor.kind, "demo": predictor.is_demo,
                              "compression": {"method": current.method, "budget": current.budget,
                                              "options": dict(current.options),
                                              "positions": engine.positions,
                                              "fixed": predictor.kind == "deploy"},
                              "methods": methods if predictor.kind == "dynamic" else [current.method],
                              "visual_tokens_per_image": n_patches,
                              "context_length": engine.context}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_id!r}",
                           type="not_found_error", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        try:
            response = await _chat(request, t0)
        except APIError as e:
            metrics.inc("requests", code=str(e.status))
            raise
        return response

    async def _chat(request: Request, t0: float):
        raw = await _read_body(request, limits.max_body_bytes)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        req = await run_in_threadpool(parse_chat_request, body, limits, model_id)
        comp = resolve_compression(req.compression, kind=predictor.kind, current=current, methods=methods,
                                   method_options=method_defaults, n_patches=n_patches)
        _check_text_length(req)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(req, comp, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(503, f"the server is busy: {e}; retry after {RETRY_AFTER_SECONDS} s",
                           type="server_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        # Wait for the prompt to be read: a prompt past the context is still a plain 400, streaming or not.
        first = await _next_event(request, job, events)
        if first[0] == "error":
            raise first[1]
        started = first[1]
        _count_prompt(started)
        if req.stream:
            return StreamingResponse(_stream(request, job, events, started, completion_id, created, t0),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text_parts = []
        while True:
            kind, data = await _next_event(request, job, events)
            if kind == "delta":
                text_parts.append(data)
            elif kind == "error":
                raise data
            else:
                break
        done = data
        _count_done(done, t0)
        metrics.inc("requests", code="200")
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done["text"]},
                         "finish_reason": done["finish_reason"], "logprobs": None}],
            "usage": _usage(started, done),
            "paddle_rc": _extension(started, done),
        })

    async def _next_event(request: Request, job: Job, events: asyncio.Queue):
        """The job's next event; if the client goes away meanwhile, the job is cancelled."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    engine.cancel(job)
                    raise APIError(499, "client closed the request", code="client_closed") from None

    async def _stream(request, job, events, started, completion_id, created, t0):
        def chunk(delta: dict, finish=None, **extra) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            body.update(extra)
            return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"

        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, data = await events.get()
                if kind == "delta":
                    yield chunk({"content": data})
                elif kind == "error":  # after the headers went out: report it in the stream
                    yield "data: " + json.dumps(data.body()) + "\n\n"
                    metrics.inc("requests", code=str(data.status))
                    finished = True
                    return
                else:
                    break
            done = data
            _count_done(done, t0)
            yield chunk({}, done["finish_reason"], paddle_rc=_extension(started, done))
            if job.request.include_usage:
                body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": model_id, "choices": [], "usage": _usage(started, done)}
                yield "data: " + json.dumps(body) + "\n\n"
            yield "data: [DONE]\n\n"
            metrics.inc("requests", code="200")
            finished = True
        finally:
            if not finished:  # the client went away mid-stream: free its slot in the batch
                engine.cancel(job)
                metrics.inc("requests", code="499")

    def _check_text_length(req) -> None:
        """A prompt whose text alone is past the context fails here, before any vision work."""
        n_text = len(predictor.tok.llm.tokenize_with_image(predictor.build_prompt(req.text),
                                                           predictor.config.image_token_index))
        need = n_text + (req.max_tokens or 1)
        if need > engine.context:
            raise APIError(400, f"this model's context is {engine.context} tokens; the text alone takes {n_text}"
                                + (f" and max_tokens asks for {req.max_tokens} more" if req.max_tokens else "")
                                + "; shorten the message", param="messages", code="context_length_exceeded")

    def _count_prompt(started: dict) -> None:
        metrics.inc("prompt_tokens", started["prompt_tokens"])
        metrics.inc("visual_tokens_before", started["visual_tokens_before"])
        metrics.inc("visual_tokens_after", started["visual_tokens"])

    def _count_done(done: dict, t0: float) -> None:
        now = time.perf_counter()
        metrics.observe("request_latency_seconds", now - t0)
        metrics.observe("time_to_first_token_seconds", done["timings"].get("first_token", now - t0))

    return app


STARTED = time.time()


def _usage(started: dict, done: dict) -> dict:
    return {"prompt_tokens": started["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": started["prompt_tokens"] + done["completion_tokens"],
            "visual_tokens_before": started["visual_tokens_before"],
            "visual_tokens_after": started["visual_tokens"]}


def _extension(started: dict, done: dict) -> dict:
    out = {"method": started["method"], "budget": started["budget"],
           "visual_tokens_before": started["visual_tokens_before"], "visual_tokens_after": started["visual_tokens"],
           "stage_counts": started["stage_counts"],
           "admitted_with": started["admitted_with"], "mean_batch_size": round(done["mean_batch_size"], 2),
           "timings": {k: round(v, 5) for k, v in done["timings"].items()}}
    if "picture" in started:
        out["picture"] = started["picture"]
    return out


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is {length} bytes; this server accepts up to {limit} "
                            "(raise --max-image-bytes for larger images)", code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"the request body is over {limit} bytes; this server accepts up to {limit} "
                                "(raise --max-image-bytes for larger images)", code="request_too_large")
        chunks.append(part)
    return b"".join(chunks)
