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



def test_operation_ids_are_unique_and_the_schema_builds_without_warnings() -> None:
    """GET and HEAD /healthz were one route with two methods, so both got the operationId
    ``healthz_healthz_head``: FastAPI warned in the server's log on the first GET /openapi.json, and
    OpenAPI requires unique ids (client generators refuse or overwrite one of them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = create_app(_never_loaded).openapi()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert set(schema["paths"]["/healthz"]) == {"get"}
