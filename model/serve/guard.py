"""What keeps ``dalle serve`` bounded as a whole, whatever its clients do.

- **Connections**: at most ``max_connections`` open at once; the next is answered 503 and closed.
- **Heads**: a request's head (its line and headers) must arrive within ``header_timeout`` seconds
  of the connection or of its first byte; otherwise 408 (or, with nothing sent, a plain close).
- **Bodies**: read only by a request that holds a place in the queue (``Worker.reserve``: a full
  queue is 429 before a byte of the body is read), counted as they arrive (413 past the limit),
  and within ``body_timeout`` seconds (408). A JSON body is at most ``MAX_JSON_BYTES``; an edit's
  files stream to disk past 1 MiB each (Starlette's spooled files).
- **Unread bodies**: an answer sent before its request's body was read to the end says
  ``Connection: close``, and the server stops reading it: it shuts its side once the answer is
  sent and closes ``LINGER_S`` later (a client still sending then sees a reset, and reads the
  answer from its socket as Linux keeps it).

``worst_case_memory`` is the bound these give, as a formula of the options (README, server
section); tests/test_hostile_server.py measures the peak RSS against it.
"""

from __future__ import annotations

import asyncio
import http
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from model.serve.protocol import APIError

MAX_JSON_BYTES = 2**20  # a generation's JSON: a prompt of 1,000 characters needs under 7 KB
LINGER_S = 1.0  # after an answer to an unread body: time for the client to read the answer

# Memory per unit, for worst_case_memory (each from what the code holds; the test measures)
CONNECTION_BYTES = 512 * 2**10  # uvicorn pauses reading at 64 KiB buffered; one socket read
# is at most 256 KiB; h11 holds at most 16 KiB of an unfinished head; the objects around them
SPOOL_BYTES = 2**20  # Starlette keeps an uploaded file's first 1 MiB in memory, then disk
HELD_BYTES_PER_PIXEL = 11  # an admitted edit: its image as RGBA (4), the marked pixels (1),
# and its answer waiting to be taken (the PNGs' base64 in JSON: 4 * 4/3, at most, < 6)
ONCE_BYTES_PER_PIXEL = 58  # one at a time: decoding an upload (16: the encoded bytes,
# Pillow's decode, its RGBA copies), running the edit (24: an RGB copy, the pasted-back
# candidates, the kept pixels, the PNGs) and writing an answer (18: the PNGs, one base64, the
# JSON buffer)
LARGE_BYTES = 8 * 2**20  # unmap_large_frees: above torch's per-token temporaries
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
FIXED_BYTES = 32 * 2**20  # requests' Python objects, the thread pool's stacks, allocator slack


def too_large(limit: int, what: str = "the request") -> APIError:
    size = f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit // 2**10} KB"
    return APIError(
        413, f"{what} is larger than this server's limit of {size}", None, "request_too_large"
    )


def check_declared_length(headers, limit: int, what: str = "the request") -> None:
    """Refuse (413) from the Content-Length header alone, before a byte of the body is read."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit() or len(declared) > 20:
        raise APIError(400, "invalid Content-Length header", None, "invalid_request")
    if int(declared) > limit:
        raise too_large(limit, what)


Receive = Callable[[], Awaitable[dict[str, Any]]]


def limited_receive(
    receive: Receive, limit: int, deadline: float, timeout: float, what: str = "the request"
) -> Receive:
    """``receive`` that refuses a body past ``limit`` bytes (413) or still arriving at
    ``deadline`` (monotonic; 408 naming ``timeout``), as it arrives."""
    total = 0

    async def guarded() -> dict[str, Any]:
        nonlocal total
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            raise APIError(
                408,
                f"the request's body did not arrive within this server's {timeout:g} s",
                None,
                "request_timeout",
            ) from None
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise too_large(limit, what)
        return message

    return guarded


async def read_limited(receive: Receive) -> bytes:
    """The whole body through a ``limited_receive``."""
    from starlette.requests import ClientDisconnect

    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


class Guard:
    """ASGI middleware, outermost. An answer sent before its request's body was read to the end
    carries ``Connection: close``, so the server stops reading that body (uvicorn would read and
    drop it to the end, an endless one forever). The ``Slot`` a handler put in
    ``scope["dalle.slot"]`` is given back once the answer is sent: taken by the client, or the
    connection dropped after ``drain_timeout`` seconds of a client not reading it."""

    def __init__(self, app, drain_timeout: float = 60.0):
        self.app = app
        self.drain_timeout = drain_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        read = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (
            b"0",
            b"",
        )
        state = {"read": read}

        async def tracked() -> dict[str, Any]:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["read"] = True
            return message

        async def closing(message) -> None:
            if message["type"] == "http.response.start" and not state["read"]:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, tracked, closing)
            drained = scope.get("dalle.drained")
            if drained is not None and scope.get("dalle.slot") is not None:
                await drained(self.drain_timeout)
        finally:
            slot = scope.pop("dalle.slot", None)
            if slot is not None:
                slot.release()


CLOSE = (b"connection", b"close")


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` while the request's body is
    still arriving shuts our side and lingers (see ``GuardedProtocol.linger``)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        protocol = self._protocol
        if protocol.lost or protocol.lingering or protocol.conn.their_state is not h11.SEND_BODY:
            self._transport.close()
        else:
            protocol.linger()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def resume_reading(self) -> None:
        if not self._protocol.lingering:  # uvicorn resumes after an answer; a lingering close
            self._transport.resume_reading()  # reads nothing more


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on connections, a deadline for each request's head,
    and a lingering close after an answer to an unread body. Configure with
    ``protocol_class(max_connections, header_timeout)``."""

    max_connections = 64
    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        self.lost = False
        self.lingering = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        super().connection_made(_LingeringTransport(transport, self))
        if len(self.connections) > self.max_connections:
            self.answer_and_close(
                APIError(
                    503,
                    f"the server is busy: {self.max_connections} connections are open "
                    "(--max-connections); retry in a few seconds",
                    None,
                    "too_many_connections",
                    kind="server_error",
                    headers={"Retry-After": "1"},
                )
            )
            return
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.scope is not None:
            self.scope["dalle.drained"] = self.drained  # for Guard (type: ignore)

    async def drained(self, timeout: float) -> None:
        """Wait until the answer is taken (the write buffer below its low mark), at most
        ``timeout`` seconds; then drop a connection whose client is not reading."""
        if self.lost or not self.flow.write_paused:
            return
        try:
            await asyncio.wait_for(self.flow.drain(), timeout)
        except TimeoutError:
            reset(self.transport._transport)

    def shutdown(self) -> None:
        if self.lingering or self.conn.our_state is h11.ERROR:
            self.transport._transport.close()  # answered outside h11's cycle: nothing to end
            return
        super().shutdown()

    def connection_lost(self, exc) -> None:
        self.lost = True
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered and closing: what the client still sends is dropped unread
        if self.conn.their_state is h11.IDLE:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_timer()
        else:
            self._disarm_head_timer()
            self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.lost or self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (a pipelined head waits for it)
        if self._head_bytes == 0:
            self._unset_keepalive_if_required()
            self.transport.close()  # an idle connection: nothing to answer
            return
        self.answer_and_close(
            APIError(
                408,
                f"the request's headers did not arrive within this server's "
                f"{self.header_timeout:g} s",
                None,
                "request_timeout",
            )
        )

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request (a bad line, a head over 16 KiB, a bad length)."""
        self.answer_and_close(
            APIError(400, f"not a valid HTTP request: {msg.rstrip('.')}", None, "invalid_http")
        )

    def answer_and_close(self, error: APIError) -> None:
        """Write ``error`` as a whole HTTP answer outside h11's cycle, then linger and close."""
        body = json.dumps(error.body()).encode()
        phrase = http.HTTPStatus(error.status).phrase
        head = [
            f"HTTP/1.1 {error.status} {phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        head += [f"{name}: {value}" for name, value in error.headers.items()]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        self.linger()

    def linger(self) -> None:
        """Stop answering and reading: shut our side once the answer is sent, read nothing
        more, and close after ``LINGER_S``."""
        if self.lingering:
            return
        self.lingering = True
        self._disarm_head_timer()
        self._unset_keepalive_if_required()
        raw = self.transport._transport
        if raw.can_write_eof():
            raw.write_eof()
        raw.pause_reading()
        self.loop.call_later(LINGER_S, self._end_linger, raw)

    @staticmethod
    def _end_linger(raw: asyncio.Transport) -> None:
        if raw.get_write_buffer_size():
            reset(raw)  # the client read nothing of its answer in LINGER_S: drop it
        else:
            raw.close()


def reset(raw: asyncio.Transport) -> None:
    """Drop the connection now, what the kernel still holds to send included (a reset: a
    plain close would keep sending it at the pace of a client that does not read)."""
    sock = raw.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    raw.abort()


def protocol_class(max_connections: int, header_timeout: float) -> type[GuardedProtocol]:
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"max_connections": max_connections, "header_timeout": header_timeout},
    )


def worst_case_memory(settings, idle_rss: int) -> int:
    """Bytes of RSS the server can reach, at most, under any load: ``idle_rss`` (the process
    with its model loaded, after one answer) plus what its options let clients hold:

        idle + C * 0.5 MiB + (Q + 1) * (2 MiB + 11 P) + U + 58 P + S + E + 32 MiB

    C = max_connections, Q = queue_size (Q + 1 requests hold a place: read, queued, run or
    answered), U = max_upload bytes (one upload is in memory at a time, for its decoding; the
    others wait on disk), P = max_pixels (of an upload, and of an answer's images together),
    S = url_store_bytes, E = upscaler_bytes (one tile of the upscaler at a time and its
    result, ``model.serve.service.upscaler_bytes``). The model's own working memory for
    sampling is in the idle
    RSS: one job runs at a time, and the first answer has sized it."""
    held = max(2 * SPOOL_BYTES + HELD_BYTES_PER_PIXEL * settings.max_pixels, MAX_JSON_BYTES)
    return int(
        idle_rss
        + settings.max_connections * CONNECTION_BYTES
        + (settings.queue_size + 1) * held
        + settings.max_upload
        + ONCE_BYTES_PER_PIXEL * settings.max_pixels
        + settings.url_store_bytes
        + settings.upscaler_bytes
        + FIXED_BYTES
    )


def unmap_large_frees(threshold: int = LARGE_BYTES) -> bool:
    """glibc: blocks of ``threshold`` bytes or more are mapped for themselves and given back to
    the system when freed. glibc's own threshold grows to 32 MB after the first such free, and a
    freed 14 MB upload then stays in the heap, fragmented: 240 MB more RSS after 32 large edits
    (benchmarks/serve_hostile.py). False where the C library has no ``mallopt``."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def server_config(app, settings, **options):
    """uvicorn's Config for ``app`` with the guarded protocol and ``settings``' limits."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=protocol_class(settings.max_connections, settings.header_timeout),
        timeout_keep_alive=5,  # an idle connection between requests
        h11_max_incomplete_event_size=16 * 2**10,  # a request's head, at most
        **options,
    )
