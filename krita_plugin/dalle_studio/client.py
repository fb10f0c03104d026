"""Talking to ``dalle serve``, standard library only: ``/v1/models`` (the model's id, size and
card headline), ``/v1/images/edits`` as a multipart form (cancellable: Cancel closes the
connection, and the server cancels the job of a client that left), and a launcher that starts
``dalle serve`` when nothing answers and stops it on exit. Every failure is a one-line
``PluginError``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .core import PluginError

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_COMMAND = "dalle"
START_HINT = "start dalle serve, or press Start dalle serve"  # the docker's button


def plain(reason: object) -> str:
    """A socket error in plain words: "connection refused", not "[Errno 111] Connection
    refused"."""
    if isinstance(reason, urllib.error.URLError):
        reason = reason.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    text = " ".join(text.split()) or "no details"
    return text[0].lower() + text[1:]


def unreachable(url: str, reason: object, words: str = "no server answers at") -> str:
    """The one line for a server that does not answer, with what to do about it."""
    return f"{words} {url}: {plain(reason)}; {START_HINT}"


@dataclass(frozen=True)
class ServerModel:
    """What ``/v1/models`` says of the served model."""

    id: str
    image_size: int
    name: str | None = None
    headline: str | None = None

    def describe(self) -> str:
        text = f"{self.id} ({self.image_size} px)"
        if self.name and self.name != self.id:
            text = f"{self.name}: {text}"
        return f"{text}; {self.headline}" if self.headline else text


@dataclass(frozen=True)
class Answer:
    pngs: list[bytes]
    seed: int | None
    note: str = ""


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    image: bytes  # PNG
    mask: bytes  # PNG, transparent where to regenerate
    n: int = 1
    seed: int | None = None
    guidance: float | None = None
    model: str | None = None

    def fields(self) -> dict[str, str]:
        values = {"prompt": self.prompt, "n": str(self.n), "response_format": "b64_json"}
        if self.seed is not None:
            values["seed"] = str(self.seed)
        if self.guidance is not None:
            values["guidance"] = f"{self.guidance:g}"
        if self.model:
            values["model"] = self.model
        return values


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form; each file is a PNG."""
    boundary = f"dalle-studio-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for name, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of the server URL; anything else is a PluginError."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PluginError(f"the server URL must look like {DEFAULT_URL}, got {url[:80]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PluginError(f"the server URL has a bad port: {url[:80]!r}") from None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def error_line(status: int, body: bytes) -> str:
    """One line for an HTTP error: OpenAI's error message when the body has one."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace").strip() or "no details"
    return f"the server refused the request (HTTP {status}): {' '.join(str(message).split())}"


class Server:
    """One ``dalle serve`` at ``url`` (its ``/v1`` root), with an optional API key."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str = "", timeout: float = 600.0):
        self.scheme, self.host, self.port, self.path = check_url(url)
        self.url = url.strip().rstrip("/")
        self.api_key = api_key.strip()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._cancelled = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def model(self, timeout: float = 5.0) -> ServerModel:
        """The served model, from ``GET /v1/models``."""
        request = urllib.request.Request(f"{self.url}/models", headers=self.headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise PluginError(error_line(error.code, error.read())) from None
        except (urllib.error.URLError, OSError) as error:
            raise PluginError(unreachable(self.url, error)) from None
        except ValueError:
            raise PluginError(
                f"{self.url}/models did not answer JSON: is it dalle serve?"
            ) from None
        try:
            first = body["data"][0]
            headline = first.get("headline") if isinstance(first.get("headline"), str) else None
            return ServerModel(first["id"], int(first["image_size"]), first.get("name"), headline)
        except (KeyError, IndexError, TypeError, ValueError):
            raise PluginError(f"{self.url}/models has no model with an image_size") from None

    def answers(self) -> bool:
        try:
            self.model(timeout=2.0)
        except PluginError:
            return False
        return True

    def edit_parts(self, request: EditRequest) -> tuple[str, bytes, dict[str, str]]:
        """(URL, body, headers) of the edit's POST: for ``edit`` and for Krita's own network
        access (the docker sends it without a thread)."""
        body, kind = multipart(request.fields(), {"image": request.image, "mask": request.mask})
        return f"{self.url}/images/edits", body, {"Content-Type": kind, **self.headers()}

    def edit(self, request: EditRequest) -> Answer:
        """The answer to one edit; ``cancel()`` from another thread ends it with PluginError."""
        _, body, headers = self.edit_parts(request)
        make = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        connection = make(self.host, self.port, timeout=self.timeout)
        with self._lock:
            self._connection, self._cancelled = connection, False
        try:
            connection.request("POST", f"{self.path}/images/edits", body, headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            if self._cancelled:
                raise PluginError("cancelled") from None
            raise PluginError(unreachable(self.url, error, "no answer from")) from None
        finally:
            with self._lock:
                self._connection = None
            connection.close()
        return answer_of(response.status, data)

    def cancel(self) -> None:
        """End the edit in flight: its connection closes, and the server cancels its job."""
        with self._lock:
            connection, self._cancelled = self._connection, True
            if connection is not None and connection.sock is not None:
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def answer_of(status: int, data: bytes) -> Answer:
    """The edit's answer from its HTTP status and body; a refusal is one line."""
    if status != 200:
        raise PluginError(error_line(status, data))
    return parse_answer(data)


def parse_answer(data: bytes) -> Answer:
    try:
        body = json.loads(data)
        pngs = [base64.b64decode(item["b64_json"]) for item in body["data"]]
    except (ValueError, KeyError, TypeError):
        raise PluginError("the server's answer is not an images answer with b64_json") from None
    seed = body.get("seed")
    return Answer(pngs, seed if isinstance(seed, int) else None, str(body.get("note") or ""))


@dataclass
class Launcher:
    """Starts ``command serve`` on the server URL's host and port when nothing answers there,
    and stops it on ``stop()`` (the plug-in calls it when Krita quits)."""

    command: str = DEFAULT_COMMAND
    process: subprocess.Popen | None = field(default=None, repr=False)
    stderr: Any = field(default=None, repr=False)  # the server's stderr, a temporary file

    def arguments(self, server: Server) -> list[str]:
        try:
            words = shlex.split(self.command)
        except ValueError as error:
            raise PluginError(
                f"the dalle command {self.command!r} cannot be read: {error}"
            ) from None
        if not words:
            raise PluginError("the dalle command is empty: set its path in the settings")
        words += ["serve", "--host", server.host, "--port", str(server.port)]
        return words + (["--api-key", server.api_key] if server.api_key else [])

    def spawn(self, server: Server) -> None:
        """Start ``command serve`` for ``server`` without waiting for it (``check`` tells). Its
        stderr goes to a temporary file, not a pipe: no Python thread, which Krita's embedded
        Python would starve."""
        if server.path != "/v1":
            raise PluginError(f"only a URL ending in /v1 can be started here, got {server.url}")
        arguments = self.arguments(server)
        self.stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        try:
            self.process = subprocess.Popen(
                arguments,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as error:
            raise PluginError(f"cannot run {arguments[0]!r}: {error.strerror or error}") from None

    def last_line(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def check(self, server: Server) -> bool:
        """True once the server answers; PluginError (its last line) when it stopped."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            last = self.last_line() or f"exit status {code}"
            self.process = None
            raise PluginError(f"dalle serve stopped: {last}")
        return server.answers()

    def start(self, server: Server, wait: float = 180.0) -> None:
        """Start the server and wait until ``/v1/models`` answers (or it exits: its last line)."""
        self.spawn(server)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.check(server):
                return
            time.sleep(0.3)
        self.stop()
        raise PluginError(f"dalle serve did not answer at {server.url} within {wait:g} s")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
