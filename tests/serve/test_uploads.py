"""``read_upload`` on hand-made ASGI requests: option fields from the query string and the form."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
from starlette.requests import Request
from starlette.types import Message

from efficientdet.serve.schemas import ApiError
from efficientdet.serve.uploads import read_upload

from .conftest import multipart

IMAGE = b"\xff\xd8\xff not really a jpeg, read_upload does not decode"


def _read(query: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """``read_upload`` of a POST /v1/detect?``query`` with ``body``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in {**headers, "content-length": str(len(body))}.items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/detect", "query_string": query.encode(),
             "headers": raw_headers}  # fmt: skip
    return asyncio.run(read_upload(Request(scope, receive), 1 << 20))


def test_fields_from_the_query_and_the_form() -> None:
    assert _read("score_threshold=0.4", IMAGE, {}) == (IMAGE, {"score_threshold": "0.4"})
    body, headers = multipart({"max_detections": "3"}, {"image": IMAGE})
    assert _read("classes=cat", body, headers) == (IMAGE, {"classes": "cat", "max_detections": "3"})


@pytest.mark.parametrize("form", [False, True], ids=["query", "form"])
def test_a_field_given_twice_is_422_not_one_of_them_silently(form: bool) -> None:
    """``?score_threshold=0.1&score_threshold=0.9`` (or the form field twice) answered at 0.9,
    the last one, without a word: the client asked for two thresholds and got one."""
    if form:
        body, headers = multipart({}, {"image": IMAGE})
        # a second score_threshold part: multipart() takes a dict, so add it by hand
        boundary = headers["Content-Type"].split("boundary=")[1]
        extra = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="score_threshold"\r\n\r\n{v}\r\n' for v in ("0.1", "0.9")
        )
        body, query = extra.encode() + body, ""
    else:
        body, headers, query = IMAGE, {}, "score_threshold=0.1&score_threshold=0.9"
    with pytest.raises(ApiError) as err:
        _read(query, body, headers)
    assert (err.value.status, err.value.code) == (422, "duplicate_field")
    assert "'score_threshold'" in err.value.message and "2 times" in err.value.message


@pytest.mark.parametrize("copies", [2, 3])
def test_the_image_file_given_twice_is_422_duplicate_field(copies: int) -> None:
    """Two 'image' parts were a 400 bad_multipart ("Too many files. Maximum number of files is
    1.", starlette's words) though docs/serving.md answers a field given twice with 422
    duplicate_field, as for the option fields."""
    body, headers = multipart({}, {"image": IMAGE})
    boundary = headers["Content-Type"].split("boundary=")[1]
    extra = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="b.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + IMAGE + b"\r\n"
    with pytest.raises(ApiError) as err:
        _read("", extra * (copies - 1) + body, headers)
    assert (err.value.status, err.value.code) == (422, "duplicate_field")
    assert err.value.message == f"field 'image' given {copies} times in the form; give it once"


def test_a_client_gone_mid_upload_is_499_not_an_internal_error() -> None:
    """A client that closed the connection halfway through its upload was answered (and counted
    in /metrics, and logged with a traceback) as 500 internal_error, "the detector failed"."""
    messages: list[Message] = [
        {"type": "http.request", "body": IMAGE[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [(b"content-length", b"100000"), (b"content-type", b"application/octet-stream")]
    scope = {"type": "http", "method": "POST", "path": "/v1/detect", "query_string": b"", "headers": headers}
    with pytest.raises(ApiError) as err:
        asyncio.run(read_upload(Request(scope, receive), 1 << 20))
    assert (err.value.status, err.value.code) == (499, "client_disconnected")
    assert "closed the connection" in err.value.message
