"""The KServe predictor's HTTP limits (`affectflow.serving.http_limits.RequestLimits`), on a small FastAPI app
that reads the body as KServe's does (`tests/integration/test_kserve.py` sends the same requests to a
real ModelServer): an oversized body is a 413, deep JSON a 400 (a 500 without the limits), a CSV or
Parquet body a 415, and no answer carries a traceback, a server path or a version."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from affectflow.serving.http_limits import RequestLimits, json_depth

MAX_BODY = 4096
MAX_DEPTH = 8
REQUEST = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["UklGRiQAAABXQVZF[{"]}]}


def _app(limits: bool) -> TestClient:
    app = FastAPI()

    @app.post("/v2/models/m/infer")
    async def infer(request: Request) -> dict:
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            return {"inputs": len(json.loads(body)["inputs"])}
        return {"bytes": len(body)}

    if limits:
        app.add_middleware(RequestLimits, max_body_bytes=MAX_BODY, max_json_depth=MAX_DEPTH)
    return TestClient(app, raise_server_exceptions=False)


def _post(client: TestClient, body: bytes, ctype: str = "application/json", **headers: str):
    return client.post("/v2/models/m/infer", content=body, headers={"content-type": ctype, **headers})


def _no_internals(text: str) -> None:
    for leak in ("stack_trace", "Traceback", "site-packages", "/work/", "kserve ", "Python"):
        assert leak not in text


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth(json.dumps(REQUEST).encode()) == 4  # { [ { [ ; the brackets inside the string do not count
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert json_depth(b'"unterminated [[[') == 0 and json_depth(b"") == 0
    assert json_depth(b'["a\\"[", [[1]]]') == 3  # an escaped quote does not end the string


def test_a_request_within_the_limits_reaches_the_app() -> None:
    r = _post(_app(True), json.dumps(REQUEST).encode())
    assert r.status_code == 200 and r.json() == {"inputs": 1}
    binary = _post(_app(True), b"\x00" * 100, "application/octet-stream", **{"inference-header-content-length": "0"})
    assert binary.status_code == 200 and binary.json() == {"bytes": 100}  # the binary extension passes


def test_a_body_over_the_limit_is_a_413() -> None:
    body = json.dumps({"inputs": [{"name": "audio", "data": ["A" * MAX_BODY]}]}).encode()
    r = _post(_app(True), body)
    assert r.status_code == 413
    assert r.json() == {"error": f"request body is over {MAX_BODY} bytes; this server takes at most that "
                                 f"(--max_body_mb {MAX_BODY / 2**20:g})"}

    def chunks():  # streamed, no Content-Length: counted as it arrives
        for _ in range(8):
            yield b" " * 1024

    streamed = _app(True).post("/v2/models/m/infer", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_deep_json_is_a_400_not_a_500() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _post(_app(False), deep[:2000] + deep[-2000:]).status_code == 500  # what the parser does without limits
    r = _post(_app(True), deep[:2000] + deep[-2000:])
    assert r.status_code == 400
    assert r.json() == {"error": f"request JSON nests 2000 levels deep; this server takes at most {MAX_DEPTH} "
                                 "(--max_json_depth); an inference request needs 4"}
    _no_internals(r.text)


@pytest.mark.parametrize("ctype", ["text/csv", "application/x-parquet", "application/vnd.apache.parquet",
                                   "application/x-www-form-urlencoded"])
def test_other_content_types_are_a_415_without_internals(ctype: str) -> None:
    r = _post(_app(True), b"audio,sample_rate\n0.1,16000\n", ctype)
    assert r.status_code == 415
    assert r.json()["error"].startswith(f"content type {ctype!r} is not accepted: send the inference request as JSON")
    _no_internals(r.text)
