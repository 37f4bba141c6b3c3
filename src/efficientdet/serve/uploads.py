"""Reading an upload (raw body or multipart) with a size limit, and decoding it with limits.

The body is read chunk by chunk and refused (413) as soon as it passes the limit, or at once
from its ``Content-Length``; the image is decoded by :func:`efficientdet.data.images.load_image`,
which checks the pixel count from the file's header before decoding anything.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from efficientdet.data.images import ImageError, load_for_model
from efficientdet.data.reduced import DecodedImage

from .schemas import DETECT_FIELDS, ApiError

__all__ = ["MULTIPART_OVERHEAD", "decode_upload", "read_upload"]

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small option fields
_MAX_FILE_PARTS = 16  # file parts parsed before a multipart body is refused as malformed
_DRAIN_LIMIT = 64 * 1024 * 1024  # an over-limit body is read (and dropped) up to this, so the client sees the 413


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """(image file bytes, option fields from the query string and the form)."""
    fields = _single_values(request.query_params.multi_items(), "the query string")
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    try:
        body = await _read_body(request, limit, max_bytes)
    except ClientDisconnect:  # not the detector's failure: was a 500 with a traceback in the log
        # 499 as nginx logs it ("client closed request"); no one reads the answer, /metrics counts it
        raise ApiError(499, "client_disconnected", "the client closed the connection before sending the whole body") from None
    if not multipart:
        if not body:
            message = "the request body is empty; send an image (raw body or multipart field 'image')"
            raise ApiError(400, "empty_body", message)
        return body, fields
    data, form_fields = await _parse_multipart(request, body)
    duplicated = sorted(set(fields) & set(form_fields))
    if duplicated:
        raise ApiError(422, "duplicate_field", f"field {duplicated[0]!r} given in both the query and the form")
    fields.update(form_fields)
    if len(data) > max_bytes:
        message = f"the image file has {len(data):,} bytes, over the limit of {max_bytes:,}"
        raise ApiError(413, "upload_too_large", message)
    return data, fields


async def _read_body(request: Request, limit: int, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, "upload_too_large", f"the request body is over the upload limit of {max_bytes:,} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= _DRAIN_LIMIT:
            async for _ in request.stream():  # read and drop: the client is still sending
                pass
        raise too_large
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            if total <= _DRAIN_LIMIT:
                async for more in request.stream():
                    total += len(more)
                    if total > _DRAIN_LIMIT:
                        break
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The 'image' file and the other fields of an (already size-checked) multipart body."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        # more files than the one accepted, so that extra parts get the 422 below (unknown_field,
        # duplicate_field) and not starlette's 400 "Too many files"; the body is already size-limited
        form = await Request(request.scope, replay).form(max_files=_MAX_FILE_PARTS, max_fields=len(DETECT_FIELDS))
    except Exception as exc:  # malformed multipart, too many parts
        reason = getattr(exc, "detail", exc)
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body ({reason})") from None
    fields = _single_values([(k, v) for k, v in form.multi_items() if isinstance(v, str)], "the form")
    files = [(key, value) for key, value in form.multi_items() if not isinstance(value, str)]
    for key, _ in files:
        if key != "image":
            raise ApiError(422, "unknown_field", f"file field {key!r}: send the image in the field 'image'")
    if len(files) > 1:
        raise ApiError(422, "duplicate_field", f"field 'image' given {len(files)} times in the form; give it once")
    image: Any = files[0][1] if files else None
    if image is None:
        got = ", ".join(repr(k) for k in form) or "none"
        raise ApiError(422, "missing_image", f"no file field 'image' in the multipart body (fields: {got})")
    data = await image.read()
    await form.close()
    if not data:
        raise ApiError(400, "empty_body", "the uploaded file 'image' is empty")
    return data, fields


def _single_values(items: list[tuple[str, str]], where: str) -> dict[str, str]:
    """``items`` as a dict; ApiError 422 for a name given more than once (a dict kept the last
    one without a word: ``?score_threshold=0.1&score_threshold=0.9`` was answered at 0.9)."""
    fields: dict[str, str] = {}
    for key, value in items:
        if key in fields:
            count = sum(k == key for k, _ in items)
            raise ApiError(422, "duplicate_field", f"field {key!r} given {count} times in {where}; give it once")
        fields[key] = value
    return fields


def decode_upload(data: bytes, max_pixels: int, decode_size: tuple[int, int] | None = None) -> DecodedImage:
    """Uploaded file bytes -> uint8 ``[3, H, W]`` (a large JPEG: a ``ReducedImage`` for the
    detector's ``decode_size``), decoded exactly as ``Detector`` decodes a file (ApiError 413
    over ``max_pixels``, read from the header; 400 for anything undecodable)."""
    fd, path = tempfile.mkstemp(prefix="efficientdet-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_for_model(path, decode_size, name="upload", max_pixels=max_pixels)
    except ImageError as exc:
        if exc.too_large:
            size = f" ({exc.size}, HxW)" if exc.size else ""
            pixels = f"{exc.pixels:,} pixels{size}" if exc.pixels else "too many pixels"
            message = f"the image has {pixels}, over this model's limit of {max_pixels:,}"
            raise ApiError(413, "too_many_pixels", message) from None
        raise ApiError(400, "bad_image", exc.problem) from None
    finally:
        os.unlink(path)

