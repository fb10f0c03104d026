"""``dalle serve``: OpenAI's images API on localhost, for the embedded model or any bundle.

Binds to loopback by default and refuses any other address without an API key. The socket is
bound before the model loads, so a port in use is one line, not a traceback. ``--port 0`` picks a
free port; the first line on stdout is always the address it serves on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import time

from model.cli.common import CLIError, check_device, load_bundle, load_upscaler_choice

log = logging.getLogger("dalle.serve")

API_KEY_VARIABLE = "DALLE_API_KEY"


def add_serve_args(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE} if set); "
        "needed for any --host other than loopback",
    )
    p.add_argument("--model-name", default=None, help="the model id clients send and see")
    p.add_argument("--queue-size", type=int, default=8, help="requests waiting, besides one")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="bytes of one request")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=16.0,
        help="of an uploaded image, and of one answer's images together",
    )
    p.add_argument("--url-ttl", type=float, default=600.0, help="seconds a url answer is kept")
    p.add_argument(
        "--url-store-mb", type=float, default=128.0, help="PNGs kept for url answers, in all"
    )
    p.add_argument(
        "--max-connections", type=int, default=64, help="open at once; the next gets 503"
    )
    p.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds for a request's headers"
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds for a request's body to arrive, and for its answer to be taken",
    )
    p.add_argument(
        "--upscaler",
        default="auto",
        metavar="auto|off|FILE",
        help="what draws 512x512 and 1024x1024 answers and edits of large images, which the "
        "model makes smaller: auto (the shipped Real-ESRGAN), off (Lanczos) or an imported "
        "*.upscaler.safetensors",
    )
    p.add_argument("--grace", type=float, default=30.0, help="seconds to finish jobs on shutdown")
    p.add_argument("--json-logs", action="store_true", help="one JSON object per log line")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_id(bundle, path: str | None, name: str | None) -> str:
    if name:
        return name
    if path is None:
        return "dalle-studio-default"
    stem = os.path.basename(path)
    for suffix in (".safetensors", ".dalle"):
        stem = stem.removesuffix(suffix)
    return stem or "dalle-studio-model"


class JSONFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message, and the job's fields."""

    FIELDS = ("job", "event", "kind", "queue", "waited_s", "seconds", "tokens_per_s", "reason")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("dalle", "uvicorn"):
        logging.getLogger(name).setLevel(logging.INFO)


def check_args(args) -> str | None:
    """The checks that need no model; returns the API key (or None)."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    if key is not None and not key.strip():
        raise CLIError("--api-key is empty")
    if not is_loopback(args.host) and key is None:
        raise CLIError(
            f"--host {args.host} can be reached from other machines: give --api-key KEY (or "
            f"${API_KEY_VARIABLE}), or bind to 127.0.0.1"
        )
    if key is not None and "\n" in key:
        raise CLIError("--api-key must be one line")
    for name, (low, high) in RANGES.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and low <= value <= high):
            raise CLIError(
                f"--{name.replace('_', '-')} must be from {low:g} to {high:g}, got {value!r}"
            )
    for name in ("timeout", "max_upload_mb", "max_megapixels", "url_ttl", "url_store_mb"):
        if not getattr(args, name) > 0:
            raise CLIError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)!r}"
            )
    return key.strip() if key is not None else None


# every numeric option's range, checked (finite, in range) before the model loads
RANGES = {
    "port": (0, 65535),
    "queue_size": (1, 1000),
    "timeout": (0, 7 * 86400),
    "max_upload_mb": (0, 4096),
    "max_megapixels": (0, 1000),  # model.files.MAX_PIXELS is 178 MP; a sane ceiling above it
    "url_ttl": (0, 30 * 86400),
    "url_store_mb": (0, 65536),
    "max_connections": (1, 100_000),
    "header_timeout": (0.1, 3600),
    "body_timeout": (0.1, 86400),
    "grace": (0, 3600),
}


def settings_of(args, key: str | None):
    """The server's Settings from checked ``args``."""
    from model.serve.app import Settings

    return Settings(
        api_key=key,
        queue_size=args.queue_size,
        timeout=args.timeout,
        max_upload=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        url_ttl=args.url_ttl,
        url_store_bytes=int(args.url_store_mb * 2**20),
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = "is in use" if error.errno in (98, 48) else f"cannot be bound ({error.strerror})"
        raise CLIError(f"{host} port {port} {reason}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def cmd_serve(args) -> int:
    try:
        import uvicorn  # noqa: F401

        from model.serve.app import create_app
        from model.serve.guard import server_config, unmap_large_frees
        from model.serve.service import ModelService, upscaler_bytes
    except ModuleNotFoundError as error:
        raise CLIError(
            f'dalle serve needs {error.name}: pip install -e ".[serve]" (or '
            f"pip install 'dalle-studio[serve]')"
        ) from None
    key = check_args(args)
    settings = settings_of(args, key)
    unmap_large_frees()  # a freed upload goes back to the system, not to a fragmented heap
    check_device(args.device)
    configure_logging(args.json_logs)
    sock = bind(args.host, args.port)
    bundle = load_bundle(args.bundle, args.device)
    upscaler = load_upscaler_choice(args.upscaler, bundle.device)
    settings = dataclasses.replace(settings, upscaler_bytes=upscaler_bytes(upscaler))
    service = ModelService(
        bundle, model_id(bundle, args.bundle, args.model_name), args.precision, upscaler
    )
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"serving {service.id} on http://{shown_host}:{port}/v1", flush=True)
    log.info(
        "model %s (%s), %dx%d px, on %s; queue %d, timeout %gs",
        service.id,
        (bundle.card or {}).get("name", "unnamed"),
        service.size,
        service.size,
        bundle.device,
        settings.queue_size,
        settings.timeout,
    )
    config = server_config(
        create_app(service, settings),
        settings,
        log_config=None,
        access_log=True,
        timeout_graceful_shutdown=args.grace,
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
