"""``GET /openapi.json`` (what ``/docs`` shows and client generators read) describes the API."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pytest.importorskip("fastapi")

from efficientdet.serve.app import ServedModel, create_app
from efficientdet.serve.schemas import DETECT_FIELDS


def _never_loaded() -> ServedModel:
    raise AssertionError("the schema must not need the model")


def _schema() -> dict[str, Any]:
    with warnings.catch_warnings():  # GET and HEAD /healthz share an operationId: FastAPI warns
        warnings.simplefilter("ignore")
        return create_app(_never_loaded).openapi()


def test_detect_documents_its_image_and_options() -> None:
    """POST /v1/detect was listed with no parameters and no request body: /docs had nothing to
    fill in, and a generated client could not send an image."""
    detect = _schema()["paths"]["/v1/detect"]["post"]
    content = detect["requestBody"]["content"]
    assert detect["requestBody"]["required"] is True
    form = content["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert form["properties"]["image"] == {"type": "string", "format": "binary", "description": form["properties"]["image"]["description"]}
    assert set(form["properties"]) == set(DETECT_FIELDS)
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    query = {p["name"]: p for p in detect["parameters"]}
    assert set(query) == set(DETECT_FIELDS) - {"image"}
    assert all(p["in"] == "query" and not p["required"] for p in query.values())
    assert query["score_threshold"]["schema"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert query["max_detections"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 10000}
    assert {"400", "413", "422", "503"} <= set(detect["responses"])

