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


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("temperature", 0, "temperature must be from"),
        ("temperature", 101, "temperature must be from"),
        ("top_k", -1, "top-k must be 0"),
        ("top_p", 0, "top-p must be in"),
        ("top_p", 1.5, "top-p must be in"),
        ("guidance", -0.5, "guidance scale must be from"),
        ("guidance", 1000, "guidance scale must be from"),
        ("seed", -1, "seed must be from"),
        ("seed", 2**64, "seed must be from"),
    ],
)
def test_each_sampling_option_out_of_range_names_its_own_field(field, value, words):
    """The option that fails says which it is (no guess from the message's first words): the
    API error's param is that field's name."""
    from model.serve.protocol import GENERATION_FIELDS, APIError, parse_common

    with pytest.raises(APIError) as caught:
        parse_common({"prompt": "a fox", field: value}, GENERATION_FIELDS, "dalle-studio")
    error = caught.value.body()["error"]
    assert caught.value.status == 400
    assert error["param"] == field and error["message"].startswith(words), error


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"n": 0}, "n"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -3}, "top_k"),
        ({"top_p": -1.0}, "top_p"),
        ({"guidance": 101.0}, "guidance"),
        ({"seed": -5}, "seed"),
    ],
)
def test_sampling_options_validate_raises_an_error_carrying_the_field(changes, field):
    from model.config import OptionError, SamplingOptions

    with pytest.raises(OptionError) as caught:
        SamplingOptions(**changes).validate()
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still do
