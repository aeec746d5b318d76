"""The registered champion behind `mlflow models serve`: waveforms over HTTP in, probabilities out.

A tiny recognizer is trained in the test on the generated corpus (ingest -> log-mel features ->
train -> evaluate -> register, which makes the first version `champion`), then
`.venv/bin/mlflow models serve -m models:/<name>@champion --env-manager local` runs on 127.0.0.1
with a free port. A network client cannot send file paths (they name files on the server's disk),
so requests carry mono float waveforms with their sample rate, or the encoded files as base64
(`audio_b64`), in MLflow's `dataframe_split` form (`affectflow.serving.predict.invocations_payload`), the
columns of the pyfunc signature. No shared data is needed, so the test is not marked `integration`.
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

from affectflow import audio
from affectflow.config import Params, with_overrides
from affectflow.contracts.manifest import read_manifest
from affectflow.runtime.netutil import free_port, http_ok, stop_group
from affectflow.serving.predict import invocations_payload, post_invocations, predict_paths
from affectflow.tracking.registry import CHAMPION
from affectflow.tracking.uri import resolve_uri

STARTUP_TIMEOUT_S = 240.0
"""Model download + app import; ~15 s idle, far more on a busy CI box."""
SHUTDOWN_TIMEOUT_S = 15.0
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
    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train
    from affectflow.tracking.registry import register

    manifest = ingest(params, work / "ingest").manifest
    features = work / "features"
    extract_features(params, manifest, features)
    tr = train(params, manifest, features, work / "train")
    evaluate(params, tr.model_dir, manifest, features, work / "evaluate")
    reg = register(params, tr.model_dir, work / "evaluate" / "metrics.json", work / "register")
    # The first version that passes the gate becomes champion (evaluate records the test manifest's hash).
    assert reg["promoted"] and reg["champion"] == reg["version"], reg["gate"]
    return {"manifest": manifest, "model_dir": tr.model_dir, "classes": tr.summary["classes"], "register": reg}


@pytest.fixture
def served(synth_params: Params, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A trained champion and a running scoring server for it; the server's process group is
    killed at teardown."""
    params = with_overrides(synth_params, TINY)
    trained = train_and_register(params, tmp_path / "work")
    port = free_port()
    bin_dir = Path(sys.executable).parent
    uri = f"models:/{params.registry.model_name}@{CHAMPION}"
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # The server execs `uvicorn` by name: the venv's bin must be on PATH.
    store = resolve_uri(params.tracking.uri)  # registry too: other tests may have exported theirs
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)  # own process group: uvicorn dies with it
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not http_ok(f"{url}/ping"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    pytest.fail(f"mlflow models serve did not come up on {url} (exit code {proc.poll()}):\n{tail}")
                time.sleep(0.5)
            yield {**trained, "url": url, "params": params, "uri": uri}
        finally:
            stop_group(proc, SHUTDOWN_TIMEOUT_S)


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
    assert list(got.columns) == [*classes, "label"] and len(got) == len(paths)
    probs = got[classes].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert (got["label"] == [classes[i] for i in probs.argmax(axis=1)]).all()
    # Same champion, same numbers as `affectflow predict` on the files.
    local = predict_paths(served["params"], paths)
    assert local.model_uri == served["uri"] and not local.failed
    assert np.allclose(probs, np.stack([p.probabilities for p in local.predictions]), atol=1e-4)
    assert np.allclose(got_8k[classes].sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(got_8k[classes].to_numpy() - probs).max() < 0.2  # band-limited copy: close, not equal
    # The files themselves, base64 in `audio_b64` (decoded by the server): the same numbers, a smaller body.
    encoded = invocations_payload(files=paths)
    got_b64 = post_invocations(served["url"], encoded)
    assert list(got_b64.columns) == [*classes, "label"]
    assert np.allclose(got_b64[classes].to_numpy(), probs, atol=1e-4)
    assert len(json.dumps(encoded)) < len(json.dumps(invocations_payload(waves, rate)))
    # Bytes that are not audio: HTTP 400, and the body names the row and the column.
    junk = {"dataframe_records": [{"audio_b64": encoded["dataframe_split"]["data"][0][0]},
                                  {"audio_b64": base64.b64encode(b"not audio at all").decode()}]}
    req = urllib.request.Request(f"{served['url']}/invocations", data=json.dumps(junk).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(req, timeout=60)
    assert bad.value.code == 400
    assert "row 1, column 'audio_b64': 16 decoded bytes are not audio" in bad.value.read().decode()
    # A request without the signature's columns is the client's error, and the answer says so.
    with pytest.raises(RuntimeError, match=r"HTTP 4\d\d") as err:
        post_invocations(served["url"], {"dataframe_split": {"columns": ["wave"], "data": [[[0.0, 0.1]]]}})
    assert "audio" in str(err.value)
