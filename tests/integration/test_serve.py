"""The registered champion behind `mlflow models serve`: waveforms over HTTP in, probabilities out.

A tiny recognizer is trained in the test on the generated corpus (ingest -> log-mel features ->
train -> evaluate -> register, which makes the first version `champion`), then
`.venv/bin/mlflow models serve -m models:/<name>@champion --env-manager local` runs on 127.0.0.1
with a free port. A network client cannot send file paths (they name files on the server's disk),
so requests carry mono float waveforms with their sample rate, or the encoded files as base64
(`audio_b64`), in MLflow's `dataframe_split` form (`affectflow.serving.predict.invocations_payload`), the
columns of the pyfunc signature. No shared data is needed, so the test is not marked `integration`.

One server per module (training the champion and starting the server dominate the cost), started
with `SERVING_MODEL_CONFIG` (MLflow's serve-time model_config) lowering the request limits, and
reused by every test here: the good requests, and the bad-input table (`BAD_REQUESTS`), whose rows
are the "Bad input" section of the README: HTTP 400, the row and the column in `message`, never a
`stack_trace`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from base_settings import base_params

from affectflow import audio
from affectflow.config import Params, with_overrides
from affectflow.contracts.manifest import read_manifest
from affectflow.runtime.netutil import free_port, stop_group, wait_ready
from affectflow.serving.predict import invocations_payload, post_invocations, predict_paths
from affectflow.tracking.registry import CHAMPION
from affectflow.tracking.uri import resolve_uri

STARTUP_TIMEOUT_S = 240.0
"""Model download + app import; ~15 s idle, far more on a busy CI box."""
SHUTDOWN_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 60.0
SERVE_CONFIG = {"max_rows": 8, "max_audio_s": 30.0}
"""Lower than the defaults, through the environment of `mlflow models serve` (SERVING_MODEL_CONFIG)."""
TINY = {
    "features.kinds": ["logmel"],
    "train.epochs": 3, "train.batch_size": 16, "train.crop_frames": 64, "train.threads": 1,
    "train.cnn.channels": [8, 16, 16], "train.cnn.gru_hidden": 16, "train.cnn.attention_hidden": 16,
    "train.specaugment.time_width": 10, "train.specaugment.freq_width": 4,
    "evaluate.bootstrap": 50,
    "registry.model_name": "affectflow-serve-test",
    "predict.decode_workers": 1, "predict.threads": 1,
}


def train_and_register(params: Params, work: Path) -> dict[str, Any]:
    """The stage functions the pipeline runs, on the generated corpus, ending with a champion."""
    from register_support import register

    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train

    manifest = ingest(params, work / "ingest").manifest
    features = work / "features"
    extract_features(params, manifest, features)
    tr = train(params, manifest, features, work / "train")
    evaluate(params, tr.model_dir, manifest, features, work / "evaluate")
    reg = register(params, tr.model_dir, work / "evaluate" / "metrics.json", work / "register")
    # The first version that passes the gate becomes champion (evaluate records the test manifest's hash).
    assert reg["promoted"] and reg["champion"] == reg["version"], reg["gate"]
    return {"manifest": manifest, "model_dir": tr.model_dir, "classes": tr.summary["classes"], "register": reg}


@pytest.fixture(scope="module")
def served(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A trained champion and a running scoring server for it, shared by the module; the server's
    process group is killed at teardown."""
    tmp = tmp_path_factory.mktemp("serve")
    params = base_params({
        "paths.workdir": str(tmp / "work"), "paths.data_root": str(synth_root.parent),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
        "ingest.classes": ["neutral", "happy", "sad", "angry"], "ingest.workers": 1, "features.workers": 1,
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}", "tracking.artifact_location": str(tmp / "mlartifacts"),
    })
    params = with_overrides(params, TINY)
    # Module scope runs outside the per-test MLflow URI isolation (conftest): put the environment back.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        trained = train_and_register(params, tmp / "work")
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    port = free_port()
    bin_dir = Path(sys.executable).parent
    uri = f"models:/{params.registry.model_name}@{CHAMPION}"
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # The server execs `uvicorn` by name: the venv's bin must be on PATH.
    store = resolve_uri(params.tracking.uri)  # registry too: other tests may have exported theirs
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
           "SERVING_MODEL_CONFIG": json.dumps(SERVE_CONFIG),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                start_new_session=True)  # own process group: uvicorn dies with it
        try:
            wait_ready(f"{url}/ping", proc, log_path, "mlflow models serve", STARTUP_TIMEOUT_S)
            yield {**trained, "url": url, "params": params, "uri": uri, "log": log_path, "tmp": tmp}
        finally:
            stop_group(proc, SHUTDOWN_TIMEOUT_S)


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    """POST /invocations; (HTTP status, the JSON answer)."""
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_champion_scores_waveforms_and_files_like_affectflow_predict(served):
    """One test: training the champion and starting the server dominate its cost."""
    classes = served["classes"]
    rows = read_manifest(served["manifest"]).query("split == 'test'").head(3)
    paths = rows["path"].tolist()
    rate = served["params"].audio.sample_rate
    waves = [audio.load(p, rate) for p in paths]
    # Any rate works: the pyfunc resamples to the model's; here one request at 8 kHz.
    low = [audio.resample(w, rate, 8000) for w in waves]
    got = post_invocations(served["url"], invocations_payload(waves, rate))
    got_8k = post_invocations(served["url"], invocations_payload(low, 8000))
    assert list(got.columns) == [*classes, "arousal", "valence", "label", "status"] and len(got) == len(paths)
    probs = got[classes].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert (got["label"] == [classes[i] for i in probs.argmax(axis=1)]).all()
    # Same champion, same numbers as `affectflow predict` on the files.
    local = predict_paths(served["params"], paths)
    assert local.model_uri == served["uri"] and not local.failed
    assert np.allclose(probs, np.stack([p.probabilities for p in local.predictions]), atol=1e-4)
    assert np.allclose(got_8k[classes].sum(axis=1), 1.0, atol=1e-5)
    # ... and the same numbers as `affectflow predict` on those 8 kHz clips as files (both resample the same
    # way); how close a band-limited copy stays to the original is the model's business, not the server's
    import soundfile as sf

    low_files = []
    for i, w in enumerate(low):
        low_files.append(served["tmp"] / f"low_{i}.wav")
        sf.write(low_files[-1], w, 8000, subtype="FLOAT")
    local_8k = predict_paths(served["params"], [str(f) for f in low_files])
    assert np.allclose(got_8k[classes].to_numpy(), np.stack([p.probabilities for p in local_8k.predictions]), atol=1e-4)
    # The files themselves, base64 in `audio_b64` (decoded by the server): the same numbers, a smaller body.
    encoded = invocations_payload(files=paths)
    got_b64 = post_invocations(served["url"], encoded)
    assert list(got_b64.columns) == [*classes, "arousal", "valence", "label", "status"]
    assert np.allclose(got_b64[classes].to_numpy(), probs, atol=1e-4)
    assert len(json.dumps(encoded)) < len(json.dumps(invocations_payload(waves, rate)))
    # The request's own rate is required for waveforms, so the same waves at 8 kHz again score as above.
    status, body = post(served["url"], json.dumps(invocations_payload(low, 8000)).encode())
    assert status == 200 and np.allclose(pd_frame(body)[classes].to_numpy(), got_8k[classes].to_numpy())


def pd_frame(body: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.DataFrame(body["predictions"])


# ----------------------------------------------------------------------------- bad input, served
def _wav_b64(seconds: float, rate: int = 16000, cut: float | None = None) -> str:
    """A generated clip as base64 WAV bytes; `cut` keeps only that share of the file (a broken copy)."""
    from affectflow.corpora.demo import utterance

    buf = io.BytesIO()
    sf.write(buf, utterance("happy", speaker=1, seed=1, sr=rate, duration=seconds), rate, format="WAV")
    data = buf.getvalue()
    return base64.b64encode(data[: int(len(data) * cut)] if cut else data).decode("ascii")


def _rows(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()  # NaN / Infinity as JSON literals


WAVE = [0.01 * math.sin(i / 5) for i in range(8000)]  # 0.5 s at 16 kHz
BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    # case: (request body (bytes, or a callable making them), text the HTTP 400 answer's message holds)
    "NaN samples": (_rows({"audio": [0.0, math.nan, *WAVE], "sample_rate": 16000}),
                    "row 0, column 'audio': audio contains NaN or infinite samples"),
    "infinite samples": (_rows({"audio": [*WAVE, math.inf], "sample_rate": 16000}),
                         "row 0, column 'audio': audio contains NaN or infinite samples"),
    "empty waveform": (_rows({"audio": [], "sample_rate": 16000}), "row 0, column 'audio': empty audio (no samples)"),
    "sample_rate 0": (_rows({"audio": WAVE, "sample_rate": 0}),
                      "row 0, column 'sample_rate': expected a whole number of Hz in 1..768000, got 0"),
    "sample_rate missing": (_rows({"audio": WAVE}),
                            "row 0, column 'sample_rate': required for an 'audio' row"),
    "waveform too short": (_rows({"audio": WAVE[:1600], "sample_rate": 16000}),
                           "row 0, column 'audio': too short: 0.100 s < 0.3 s (audio.min_duration_s)"),
    "server file path": (_rows({"path": "/etc/passwd"}),
                         "row 0, column 'path': file paths are not accepted by this model"),
    "missing server file": (_rows({"path": "/no/such/file.wav"}),  # the same answer: nothing to probe
                            "row 0, column 'path': file paths are not accepted by this model"),
    "wrong column": (json.dumps({"dataframe_split": {"columns": ["wave"], "data": [[[0.0, 0.1]]]}}).encode(),
                     "no 'audio_b64', 'audio' or 'path' column; the model takes the columns "
                     "path, audio, sample_rate, audio_b64 and ignores any other"),
    "two audio columns in a row": (lambda: _rows({"audio": WAVE, "audio_b64": _wav_b64(0.5), "sample_rate": 16000}),
                                   "row 0: 'audio' and 'audio_b64' are both set"),
    "bytes that are not audio": (lambda: _rows({"audio_b64": _wav_b64(0.5)},
                                               {"audio_b64": base64.b64encode(b"not audio at all").decode()}),
                                 "row 1, column 'audio_b64': 16 decoded bytes are not audio"),
    "not base64": (_rows({"audio_b64": "this is not base64!"}), "row 0, column 'audio_b64': not valid base64"),
    "truncated file": (lambda: _rows({"audio_b64": _wav_b64(1.0, cut=0.6)}),
                       "row 0, column 'audio_b64': truncated audio: 'RIFF' chunk declares"),
    "encoded clip too short": (lambda: _rows({"audio_b64": _wav_b64(0.1)}),
                               "row 0, column 'audio_b64': too short: 0.100 s < 0.3 s"),
    "rate disagrees with the file": (lambda: _rows({"audio_b64": _wav_b64(0.5, rate=22050), "sample_rate": 16000}),
                                     "row 0: column 'sample_rate' is 16000 but the 'audio_b64' file's header says "
                                     "22050 Hz"),
    "too many rows": (_rows(*[{"audio": WAVE, "sample_rate": 16000}] * 9),
                      "9 rows; this model takes at most 8 per request (model_config max_rows)"),
    "too much audio": (_rows({"audio": WAVE[:400], "sample_rate": 10}),  # 400 samples at 10 Hz: 40 s
                       "row 0: the request carries more than 30 s of audio; this model takes at most that per "
                       "request (model_config max_audio_s)"),
    "sample_rate not a number": (_rows({"audio": WAVE, "sample_rate": "fast"}), "sample_rate"),
    "not JSON": (b'{"dataframe_records": [', "Ensure that input is a valid JSON formatted string"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_http_400_naming_the_row_and_column_and_no_stack_trace(served, case):
    body, expected = BAD_REQUESTS[case]
    status, answer = post(served["url"], body() if callable(body) else body)
    assert status == 400, (status, answer)
    assert expected in answer["message"], answer["message"][:2000]
    assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
    assert answer["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


def test_a_bad_request_does_not_poison_the_next_one(served):
    """Refused requests leave the worker healthy: a good one right after is answered."""
    status, _ = post(served["url"], _rows({"audio": [math.nan], "sample_rate": 16000}))
    assert status == 400
    status, body = post(served["url"], _rows({"audio": WAVE, "sample_rate": 16000}))
    assert status == 200 and len(body["predictions"]) == 1
    assert math.isclose(sum(body["predictions"][0][c] for c in served["classes"]), 1.0, abs_tol=1e-5)
