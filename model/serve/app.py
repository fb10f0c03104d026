"""The web side: a Starlette app with OpenAI's image routes, served by uvicorn.

``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` (multipart), ``GET /v1/models``
(and ``/v1/models/{id}``), ``GET /health``, and ``GET /v1/files/{name}.png`` for ``url`` answers,
kept for ``url_ttl`` seconds. A request takes its place in the queue before its body is read (a
full queue is 429 at once); its body is counted as it arrives, refused past ``max_upload`` bytes
or ``body_timeout`` seconds; every failure is OpenAI's error JSON. A job runs on the worker thread;
the request that queued it waits for it, cancels it when the client disconnects or the timeout
passes. What bounds the server as a whole (connections, heads, bodies) is model/serve/guard.py.
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
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from model.serve import guard
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
    url_store_bytes: int = 128 * 2**20  # PNGs kept for url answers, the oldest dropped first
    max_connections: int = 64  # open at once; the next is answered 503
    header_timeout: float = 10.0  # seconds for a request's head to arrive
    body_timeout: float = 60.0  # seconds for its body to arrive, and for its answer to be taken
    upscaler_bytes: int = 0  # the upscaler's working memory (model.serve.service.upscaler_bytes)


class ImageStore:
    """PNGs served for ``url`` answers: at most ``capacity`` bytes of them, each for ``ttl``
    seconds, the oldest dropped first to make room."""

    def __init__(self, ttl: float, capacity: int):
        self.ttl = ttl
        self.capacity = capacity
        self.size = 0  # bytes held
        self._items: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def put(self, png: bytes) -> str:
        if len(png) > self.capacity:
            raise ValueError(f"a PNG of {len(png)} bytes is larger than the store")
        self._expire()
        while self._items and self.size + len(png) > self.capacity:
            self._drop_oldest()
        name = secrets.token_urlsafe(16)
        self._items[name] = (time.monotonic() + self.ttl, png)
        self.size += len(png)
        return name

    def _drop_oldest(self) -> None:
        self.size -= len(self._items.popitem(last=False)[1][1])

    def get(self, name: str) -> bytes | None:
        self._expire()
        item = self._items.get(name)
        return item[1] if item else None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._drop_oldest()


class ASCIIJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate echoed from a request
    (``"\\ud800"``) is valid JSON text, where UTF-8 cannot encode it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_response(error: APIError) -> JSONResponse:
    return ASCIIJSONResponse(error.body(), status_code=error.status, headers=error.headers)


def header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def parse_json(raw: bytes) -> Any:
    """A request's JSON, or 400 naming what is wrong: not UTF-8, not JSON, nested too deep
    (RecursionError), a number too long to convert (ValueError past 4,300 digits)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        raise APIError(400, "the request body is JSON nested too deep") from None
    except ValueError as error:  # "Exceeds the limit (4300 digits) for integer string ..."
        detail = str(error).split(";")[0]
        raise APIError(400, f"the request body has a number out of range ({detail})") from None


def busy(full: QueueFull, waiting: int | None = None) -> APIError:
    """The 429 for a full queue: ``waiting`` requests already queued, when known."""
    queued = f": {waiting} requests are already waiting" if waiting is not None else ""
    return APIError(
        429,
        f"the server is busy{queued}; retry in about {full.retry_after} s",
        None,
        "rate_limit_exceeded",
        kind="requests",
        headers={"Retry-After": str(full.retry_after)},
    )


def shutting_down(message: str = "the server is shutting down") -> APIError:
    return APIError(503, message, None, "shutting_down", kind="server_error")


class Routes:
    """The routes of one app, over its ``service``: requests are authorized, admitted to the
    queue, their bodies bounded, their jobs run on the worker and their answers written."""

    def __init__(self, service, settings: Settings):
        self.service = service
        self.settings = settings
        self.worker = Worker(settings.queue_size)
        self.store = ImageStore(settings.url_ttl, settings.url_store_bytes)
        self.decoding = asyncio.Semaphore(1)  # one upload decoded at a time: bounded, and fair

    # -- admission and bodies

    def authorize(self, request: Request) -> None:
        if self.settings.api_key is None:
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
        if not hmac.compare_digest(key.strip().encode(), self.settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", None, "invalid_api_key")

    def admit(self, request: Request) -> None:
        """Take the request's place in the queue (429 when full) before its body is read; the
        place is given back once its answer is sent (guard.Guard)."""
        try:
            request.scope["dalle.slot"] = self.worker.reserve()
        except QueueFull as full:
            raise busy(full, self.settings.queue_size) from None
        except ShuttingDown:
            raise shutting_down() from None

    def body_of(self, request: Request, limit: int, what: str = "the request") -> Request:
        """``request`` whose body is refused past ``limit`` bytes (413, from Content-Length
        before a byte is read) or past ``settings.body_timeout`` seconds (408)."""
        guard.check_declared_length(request.headers, limit, what)
        timeout = self.settings.body_timeout
        deadline = time.monotonic() + timeout
        receive = guard.limited_receive(request.receive, limit, deadline, timeout, what)
        return Request(request.scope, receive)

    # -- jobs

    def answer_size(self, image_request: ImageRequest) -> tuple[int, int]:
        """The size of the answer's images, refused (400) when all of them together are more
        than ``settings.max_pixels``."""
        size = image_request.size or (
            image_request.image.size if image_request.is_edit else (self.service.size,) * 2
        )
        pixels = image_request.options.n * size[0] * size[1]
        max_pixels = self.settings.max_pixels
        if pixels > max_pixels:
            raise APIError(
                400,
                f"n={image_request.options.n} images of {size[0]}x{size[1]} make "
                f"{pixels / 1e6:.3g} megapixels; this server answers at most "
                f"{max_pixels / 1e6:g} megapixels a request: ask for fewer or smaller images",
                "n",
                "answer_too_large",
            )
        return size

    async def run_job(self, request: Request, image_request: ImageRequest, kind: str) -> Response:
        size = self.answer_size(image_request)
        self.service.check_memory(image_request)
        job = Job(
            run=lambda cancel: self.service.run(image_request, cancel),
            kind=kind,
            detail=f"n={image_request.options.n} size={size[0]}x{size[1]}",
        )
        try:
            self.worker.submit(job, request.scope.get("dalle.slot"))
        except QueueFull as full:  # only without a slot (a request that skipped admit)
            raise busy(full) from None
        except ShuttingDown:
            raise shutting_down() from None
        result = await self.wait_for(request, job)
        if result is None:
            return Response(status_code=499)  # nobody is listening
        return self.answer(request, image_request, result)

    async def wait_for(self, request: Request, job: Job):
        """The job's result, or None when the client disconnected; the job is cancelled when
        the client disconnects, the timeout passes (504) or the server shuts down."""
        waiting = asyncio.wrap_future(job.future)

        def give_up(reason: str) -> None:
            job.cancel_because(reason)
            self.worker.withdraw(job)  # a waiting job leaves the queue now; a running one stops
            waiting.add_done_callback(lambda done: done.cancelled() or done.exception())

        timeout = self.settings.timeout
        deadline = job.queued_at + timeout
        try:
            while not waiting.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    give_up(f"timed out after {timeout:g} s")
                    raise APIError(
                        504,
                        f"the request took longer than this server's timeout of {timeout:g} s "
                        "and was cancelled",
                        None,
                        "timeout",
                        kind="server_error",
                    )
                await asyncio.wait({waiting}, timeout=min(0.25, left))
                if not waiting.done() and await request.is_disconnected():
                    give_up("the client disconnected")
                    return None
            return waiting.result()
        except asyncio.CancelledError:  # the server is shutting down past its grace period
            give_up("the server is shutting down")
            raise
        except JobCancelled:
            raise APIError(
                503, f"the job was cancelled: {job.reason}", None, "cancelled", kind="server_error"
            ) from None
        except ShuttingDown:
            raise shutting_down("the server shut down before this job ran") from None

    def answer(self, request: Request, image_request: ImageRequest, result) -> Response:
        """The JSON answer, written straight into one buffer: each PNG's base64 is its only
        other copy (507 when url answers would not fit the store)."""
        pngs = result.pngs
        as_url = image_request.response_format == "url"
        if as_url and sum(len(png) for png in pngs) > self.store.capacity:
            raise APIError(
                507,
                f"the answer's PNGs are larger than this server keeps for url answers "
                f"({self.store.capacity / 2**20:g} MB, --url-store-mb): ask for b64_json",
                "response_format",
                "url_store_full",
                kind="server_error",
            )
        answer = bytearray(b'{"created":%d,"data":[' % int(time.time()))
        for number, png in enumerate(pngs):
            answer += b"," if number else b""
            if image_request.response_format == "b64_json":
                answer += b'{"b64_json":"'
                answer += base64.b64encode(png)
                answer += b'"}'
            else:
                url = str(request.url_for("image_file", name=self.store.put(png)))
                answer += json.dumps({"url": url}).encode()
        rest: dict[str, Any] = {"model": self.service.id, "seed": result.seed}
        headers = {"X-Seed": str(result.seed)}
        if result.note:
            rest["note"] = result.note
            headers["X-DALLE-Studio-Note"] = header_safe(result.note)
        answer += b"]," + json.dumps(rest, separators=(",", ":")).encode()[1:]
        return Response(memoryview(answer), media_type="application/json", headers=headers)

    # -- images

    async def generations(self, request: Request) -> Response:
        self.authorize(request)
        self.admit(request)
        limit = min(self.settings.max_upload, guard.MAX_JSON_BYTES)
        raw = await guard.read_limited(self.body_of(request, limit, "a JSON body").receive)
        body = parse_json(raw)
        del raw
        service = self.service
        return await self.run_job(
            request, parse_generation(body, service.size, service.id), "generate"
        )

    async def edits(self, request: Request) -> Response:
        self.authorize(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "an edit is sent as multipart/form-data (image, mask, prompt)")
        self.admit(request)
        image_request = await self.read_edit(self.body_of(request, self.settings.max_upload))
        return await self.run_job(request, image_request, "edit")

    async def read_edit(self, form_request: Request) -> ImageRequest:
        """The edit's form, its uploads decoded one at a time off the event loop."""
        try:  # files stream to disk past 1 MiB each (Starlette's spooled files)
            form = await form_request.form(max_files=4, max_fields=32, max_part_size=2**20)
        except HTTPException as error:
            raise APIError(400, f"the form cannot be read: {error.detail}") from None
        fields: dict[str, Any] = {}
        uploads: dict[str, Any] = {}  # spooled files: past 1 MiB on disk until decoded
        try:
            for name, value in form.multi_items():
                if name in fields or name in uploads:
                    raise APIError(400, f"'{name[:40]}' is sent more than once", name[:40])
                if isinstance(value, str):
                    fields[name] = value
                else:
                    uploads[name] = value
            async with self.decoding:
                files = {name: await upload.read() for name, upload in uploads.items()}
                service = self.service
                image_request = await asyncio.to_thread(
                    parse_edit, fields, files, service.size, service.id, self.settings.max_pixels
                )
                del files  # the encoded upload: only its pixels wait in the queue
        finally:
            await form.close()
        return image_request

    # -- models, health, files

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self.service.describe()]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        name = request.path_params["model"]
        served = self.service.id
        if name != served:
            raise APIError(
                404,
                f"The model '{name[:80]}' does not exist on this server; it serves '{served}'",
                None,
                "model_not_found",
            )
        return JSONResponse(self.service.describe())

    async def health(self, request: Request) -> Response:
        status = self.worker.status()
        return JSONResponse(
            {"status": "ok", "model": self.service.id, **status, "url_store_bytes": self.store.size}
        )

    async def image_file(self, request: Request) -> Response:
        png = self.store.get(request.path_params["name"])
        if png is None:
            raise APIError(
                404,
                f"no such image: url answers are kept for {self.settings.url_ttl:g} s",
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


async def cancelled(request: Request, error: Exception) -> Response:
    return Response(status_code=499)


async def server_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        APIError(500, f"internal error: {type(error).__name__}", None, None, "server_error")
    )


def create_app(service, settings: Settings | None = None) -> Starlette:
    """The app for ``service`` (a ``model.serve.service.ModelService``, or anything with its
    ``id``, ``size``, ``describe()``, ``check_memory(request)`` and ``run(request, cancel)``)."""
    settings = settings or Settings()
    routes = Routes(service, settings)
    worker = routes.worker

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = Starlette(
        routes=[
            Route("/v1/images/generations", routes.generations, methods=["POST"]),
            Route("/v1/images/edits", routes.edits, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.model, methods=["GET"]),
            Route("/v1/files/{name}.png", routes.image_file, methods=["GET"], name="image_file"),
            Route("/health", routes.health, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(guard.Guard, drain_timeout=settings.body_timeout)],
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            JobCancelled: cancelled,
            ClientDisconnect: cancelled,
            Exception: server_error,
        },
    )
    app.state.worker = worker
    app.state.store = routes.store
    return app
