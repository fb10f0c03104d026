"""The web side: a Starlette app with OpenAI's image routes, served by uvicorn.

``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` (multipart), ``GET /v1/models``
(and ``/v1/models/{id}``), ``GET /health``, and ``GET /v1/files/{name}.png`` for ``url`` answers,
kept for ``url_ttl`` seconds. Every request body is counted before it is parsed and refused past
``max_upload`` bytes; every failure is OpenAI's error JSON. A job runs on the worker thread; the
request that queued it waits for it, cancels it when the client disconnects or the timeout passes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from model.serve.protocol import APIError, ImageRequest, parse_edit, parse_generation
from model.serve.worker import Job, JobCancelled, QueueFull, ShuttingDown, Worker

log = logging.getLogger("dalle.serve")


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    queue_size: int = 8
    timeout: float = 300.0  # seconds from queueing to the answer
    max_upload: int = 20 * 2**20  # bytes of one request body
    max_pixels: int = 16_000_000  # of an uploaded image, checked from its header
    url_ttl: float = 600.0  # seconds a url answer stays available
    url_capacity: int = 256  # images kept for url answers, the oldest dropped first


class ImageStore:
    """PNGs served for ``url`` answers: at most ``capacity``, each for ``ttl`` seconds."""

    def __init__(self, ttl: float, capacity: int):
        self.ttl = ttl
        self.capacity = capacity
        self._items: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def put(self, png: bytes) -> str:
        self._expire()
        name = secrets.token_urlsafe(16)
        self._items[name] = (time.monotonic() + self.ttl, png)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return name

    def get(self, name: str) -> bytes | None:
        self._expire()
        item = self._items.get(name)
        return item[1] if item else None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._items.popitem(last=False)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes before more is read."""
    declared = request.headers.get("content-length")
    too_large = APIError(
        413,
        f"the request is larger than this server's limit of {limit / 2**20:.0f} MB",
        None,
        "request_too_large",
    )
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "invalid Content-Length header", None, "invalid_request")
        if int(declared) > limit:
            raise too_large
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise JobCancelled("the client disconnected while sending") from None
    return b"".join(chunks)


def create_app(service, settings: Settings | None = None) -> Starlette:
    """The app for ``service`` (a ``model.serve.service.ModelService``, or anything with its
    ``id``, ``size``, ``describe()``, ``check_memory(request)`` and ``run(request, cancel)``)."""
    settings = settings or Settings()
    worker = Worker(settings.queue_size)
    store = ImageStore(settings.url_ttl, settings.url_capacity)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401,
                "You didn't provide an API key: send 'Authorization: Bearer KEY' (the key "
                "`dalle serve --api-key` was started with)",
                None,
                "missing_api_key",
            )
        if not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", None, "invalid_api_key")

    async def run_job(request: Request, image_request: ImageRequest, kind: str) -> Response:
        service.check_memory(image_request)
        size = image_request.size or (
            image_request.image.size if image_request.is_edit else (service.size,) * 2
        )
        job = Job(
            run=lambda cancel: service.run(image_request, cancel),
            kind=kind,
            detail=f"n={image_request.options.n} size={size[0]}x{size[1]}",
        )
        try:
            worker.submit(job)
        except QueueFull as full:
            raise APIError(
                429,
                f"the server is busy: {settings.queue_size} requests are already waiting; "
                f"retry in about {full.retry_after} s",
                None,
                "rate_limit_exceeded",
                kind="requests",
                headers={"Retry-After": str(full.retry_after)},
            ) from None
        except ShuttingDown:
            raise APIError(
                503, "the server is shutting down", None, "shutting_down", kind="server_error"
            ) from None
        waiting = asyncio.wrap_future(job.future)

        def give_up(reason: str) -> None:
            job.cancel_because(reason)
            worker.withdraw(job)  # a waiting job leaves the queue now; a running one stops soon
            waiting.add_done_callback(lambda done: done.cancelled() or done.exception())

        deadline = job.queued_at + settings.timeout
        try:
            while not waiting.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    give_up(f"timed out after {settings.timeout:g} s")
                    raise APIError(
                        504,
                        f"the request took longer than this server's timeout of "
                        f"{settings.timeout:g} s and was cancelled",
                        None,
                        "timeout",
                        kind="server_error",
                    )
                await asyncio.wait({waiting}, timeout=min(0.25, left))
                if not waiting.done() and await request.is_disconnected():
                    give_up("the client disconnected")
                    return Response(status_code=499)  # nobody is listening
            result = waiting.result()
        except asyncio.CancelledError:  # the server is shutting down past its grace period
            give_up("the server is shutting down")
            raise
        except JobCancelled:
            raise APIError(
                503, f"the job was cancelled: {job.reason}", None, "cancelled", kind="server_error"
            ) from None
        except ShuttingDown:
            raise APIError(
                503,
                "the server shut down before this job ran",
                None,
                "shutting_down",
                kind="server_error",
            ) from None
        data = []
        for png in result.pngs:
            if image_request.response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(png).decode("ascii")})
            else:
                data.append({"url": str(request.url_for("image_file", name=store.put(png)))})
        body = {"created": int(time.time()), "data": data, "model": service.id, "seed": result.seed}
        headers = {"X-Seed": str(result.seed)}
        if result.note:
            body["note"] = result.note
            headers["X-DALLE-Studio-Note"] = header_safe(result.note)
        return JSONResponse(body, headers=headers)

    async def generations(request: Request) -> Response:
        authorize(request)
        raw = await read_body(request, settings.max_upload)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON ({error})") from None
        return await run_job(request, parse_generation(body, service.size, service.id), "generate")

    async def edits(request: Request) -> Response:
        authorize(request)
        raw = await read_body(request, settings.max_upload)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "an edit is sent as multipart/form-data (image, mask, prompt)")

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        form_request = Request(request.scope, replay)
        try:
            form = await form_request.form(max_files=4, max_fields=32, max_part_size=2**20)
        except HTTPException as error:
            raise APIError(400, f"the form cannot be read: {error.detail}") from None
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        try:
            for name, value in form.multi_items():
                if name in fields or name in files:
                    raise APIError(400, f"'{name[:40]}' is sent more than once", name[:40])
                if isinstance(value, str):
                    fields[name] = value
                else:
                    files[name] = await value.read()
        finally:
            await form.close()
        # decoding a large upload takes a while: off the event loop
        image_request = await asyncio.to_thread(
            parse_edit, fields, files, service.size, service.id, settings.max_pixels
        )
        return await run_job(request, image_request, "edit")

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [service.describe()]})

    async def model(request: Request) -> Response:
        authorize(request)
        name = request.path_params["model"]
        if name != service.id:
            raise APIError(
                404,
                f"The model '{name[:80]}' does not exist on this server; it serves '{service.id}'",
                None,
                "model_not_found",
            )
        return JSONResponse(service.describe())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": service.id, **worker.status()})

    async def image_file(request: Request) -> Response:
        png = store.get(request.path_params["name"])
        if png is None:
            raise APIError(
                404,
                f"no such image: url answers are kept for {settings.url_ttl:g} s",
                None,
                "not_found",
            )
        return Response(png, media_type="image/png")

    async def api_error(request: Request, error: APIError) -> Response:
        return error_response(error)

    async def http_error(request: Request, error: HTTPException) -> Response:
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return error_response(APIError(error.status_code, detail, None, code))

    async def cancelled(request: Request, error: JobCancelled) -> Response:
        return Response(status_code=499)

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            APIError(500, f"internal error: {type(error).__name__}", None, None, "server_error")
        )

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    routes = [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/files/{name}.png", image_file, methods=["GET"], name="image_file"),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            JobCancelled: cancelled,
            Exception: server_error,
        },
    )
    app.state.worker = worker
    app.state.store = store
    return app
