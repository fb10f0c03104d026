"""The server's shared answers (issue 29): a full queue is one 429, whether admission or the
submit of a request without a place finds it full, and shutting down is one 503."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")

from model.serve.app import busy, shutting_down  # noqa: E402
from model.serve.worker import QueueFull  # noqa: E402


@pytest.mark.parametrize(
    ("waiting", "message"),
    [
        (8, "the server is busy: 8 requests are already waiting; retry in about 12 s"),
        (None, "the server is busy; retry in about 12 s"),
    ],
)
def test_a_full_queue_is_one_openai_429_with_retry_after(waiting, message):
    error = busy(QueueFull(12), waiting)
    assert error.status == 429
    assert error.headers == {"Retry-After": "12"}
    assert error.body() == {
        "error": {
            "message": message,
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_shutting_down_is_a_503_server_error():
    error = shutting_down("the server shut down before this job ran")
    assert error.status == 503
    assert error.body()["error"] == {
        "message": "the server shut down before this job ran",
        "type": "server_error",
        "param": None,
        "code": "shutting_down",
    }
    assert shutting_down().message == "the server is shutting down"
