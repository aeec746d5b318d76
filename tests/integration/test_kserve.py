"""The KServe predictor as a real process: `python -m affectflow.serving.kserve` (kserve ModelServer)
on 127.0.0.1 answers Open Inference Protocol (v2) requests with the registered champion, refuses
bad input with a 400 that says what is wrong, and follows a promotion (the alias is re-resolved).

A tiny recognizer is trained and registered into a sqlite MLflow store in the test (as
test_serve.py does), so no shared data is needed. Bounded: start-up, each request and shutdown
have timeouts.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serve import TINY, train_and_register

from affectflow.config import Params, with_overrides
from affectflow.contracts.manifest import read_manifest
from affectflow.runtime.netutil import free_port, http_ok, stop_group, wait_ready
from affectflow.serving.predict import predict_paths
from affectflow.tracking.registry import CHAMPION
from affectflow.tracking.uri import resolve_uri

pytest.importorskip("kserve", reason="the `serving` extra (kserve) is not installed")

STARTUP_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 60.0
ROLLOUT_TIMEOUT_S = 60.0
MODEL = "affectflow-ser"
MAX_BODY_MB = 2


@pytest.fixture
def predictor(synth_params: Params, tmp_path: Path) -> Iterator[dict[str, Any]]:
    params = with_overrides(synth_params, TINY)
    trained = train_and_register(params, tmp_path / "work")
    store = resolve_uri(params.tracking.uri)
    http, grpc = free_port(), free_port()
    uri = f"models:/{params.registry.model_name}@{CHAMPION}"
    cmd = [sys.executable, "-m", "affectflow.serving.kserve", f"--model_name={MODEL}", f"--model_uri={uri}",
           f"--http_port={http}", f"--grpc_port={grpc}", "--reload_interval_s=1", f"--max_body_mb={MAX_BODY_MB}"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store, "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    log_path = tmp_path / "predictor.log"
    url = f"http://127.0.0.1:{http}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
        try:
            wait_ready(f"{url}/v2/health/ready", proc, log_path, "the predictor", STARTUP_TIMEOUT_S)
            yield {**trained, "url": url, "params": params, "store": store, "log": log_path}
        finally:
            stop_group(proc, 15.0)


def _infer(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _post_declared(url: str, length: int, ctype: str) -> tuple[int, str]:
    """Headers declaring a `length`-byte body, then wait for the answer: a server that refuses by
    Content-Length answers before the body, and closes; sending the body anyway would race that close
    (a broken pipe on the client under load), so none is sent."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.putrequest("POST", f"/v2/models/{MODEL}/infer")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _post_raw(url: str, data: bytes, ctype: str) -> tuple[int, str]:
    req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=data, headers={"Content-Type": ctype},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _audio_request(paths: list[str]) -> dict[str, Any]:
    data = [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]
    return {"id": "t1", "inputs": [{"name": "audio", "shape": [len(data)], "datatype": "BYTES", "data": data}]}


def test_predictor_answers_v2_requests_refuses_bad_input_and_follows_the_champion(predictor: dict[str, Any]):
    """One test: training the champion and starting the server dominate its cost."""
    url, classes = predictor["url"], predictor["classes"]
    assert http_ok(f"{url}/v2/health/live")
    with urllib.request.urlopen(f"{url}/v2/models/{MODEL}", timeout=REQUEST_TIMEOUT_S) as r:
        meta = json.loads(r.read())
    assert meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "audio", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "status", "datatype": "BYTES", "shape": [-1]},
                               {"name": "dimensions", "datatype": "FP32", "shape": [-1, 2]}]  # arousal, valence
    paths = read_manifest(predictor["manifest"]).query("split == 'test'")["path"].head(3).tolist()

    # The README's request, as printed there: no "id" (optional in the protocol).
    readme = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES",
                          "data": [base64.b64encode(Path(paths[0]).read_bytes()).decode("ascii")]}]}
    status, body = _infer(url, readme)
    assert status == 200, body
    assert body["id"] and body["model_name"] == MODEL
    assert {o["name"] for o in body["outputs"]} == {"probabilities", "label", "status", "dimensions"}

    status, body = _infer(url, _audio_request(paths))
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    probs = np.asarray(out["probabilities"]["data"], np.float64).reshape(out["probabilities"]["shape"])
    assert probs.shape == (3, len(classes)) and out["probabilities"]["datatype"] == "FP32"
    assert out["probabilities"]["parameters"]["classes"] == ",".join(classes)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    dims = np.asarray(out["dimensions"]["data"], np.float64).reshape(out["dimensions"]["shape"])
    assert dims.shape == (3, 2) and out["dimensions"]["parameters"]["dimensions"] == "arousal,valence"
    assert np.all(np.abs(dims) <= 1.0)
    assert out["label"]["data"] == [classes[i] for i in probs.argmax(axis=1)]
    assert body["model_version"] == str(predictor["register"]["version"])
    # The same numbers as `affectflow predict` with the same champion.
    local = predict_paths(predictor["params"], paths)
    assert np.allclose(probs, np.stack([p.probabilities for p in local.predictions]), atol=1e-4)

    # Bad input: 400, and the message says what is wrong.
    wrong_type = {"inputs": [{"name": "audio", "shape": [2], "datatype": "FP32", "data": [0.1, 0.2]}]}
    status, body = _infer(url, wrong_type)
    assert status == 400 and "datatype is FP32, expected BYTES" in body["error"], body
    not_audio = _audio_request(paths[:1])
    not_audio["inputs"][0]["data"].append(base64.b64encode(b"not audio at all").decode())
    not_audio["inputs"][0]["shape"] = [2]
    status, body = _infer(url, not_audio)
    assert status == 400 and "input 'audio' element 1: 16 decoded bytes are not audio" in body["error"], body
    status, body = _infer(url, {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}]})
    assert status == 400 and "element 0: not valid base64" in body["error"], body
    status, body = _infer(url, {"inputs": [{"name": "wave", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                                           {"name": "rate", "shape": [1], "datatype": "INT32", "data": [1]}]})
    assert status == 400 and "no input named 'audio'" in body["error"], body
    # HTTP limits (affectflow.serving.http_limits.RequestLimits): before any parser, no internals in the answer.
    for data, ctype, code, says in (
            (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nests 100000 levels deep"),
            (b"audio,sample_rate\n0.1,16000\n", "text/csv", 415, "content type 'text/csv' is not accepted"),
            (b"PAR1\x00\x00PAR1", "application/vnd.apache.parquet", 415, "is not accepted"),
            (MAX_BODY_MB * 2**20 + 1, "application/json", 413, f"(--max_body_mb {MAX_BODY_MB})")):
        status, text = _post_raw(url, data, ctype) if isinstance(data, bytes) else _post_declared(url, data, ctype)
        assert status == code and says in json.loads(text)["error"], (status, text)
        assert not any(leak in text for leak in ("stack_trace", "Traceback", "site-packages", "/tmp", "/work")), text

    # A promotion rolls out: point the alias at a new version, the predictor picks it up by itself.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=predictor["store"])
    name = predictor["params"].registry.model_name
    first = client.get_model_version_by_alias(name, CHAMPION)
    second = client.create_model_version(name, source=first.source, run_id=first.run_id)
    client.set_registered_model_alias(name, CHAMPION, second.version)
    deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
    while True:
        status, body = _infer(url, _audio_request(paths[:1]))
        if status == 200 and body["model_version"] == str(second.version):
            break
        assert time.monotonic() < deadline, f"still {body.get('model_version')} after {ROLLOUT_TIMEOUT_S} s:\n" + \
            predictor["log"].read_text(errors="replace")[-2000:]
        time.sleep(0.5)
    assert "rolled out" in predictor["log"].read_text(errors="replace")
