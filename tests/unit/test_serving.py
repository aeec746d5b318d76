"""The pyfunc model: audio files or waveforms in, class probabilities out, on its own."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from recognizer_support import trained

from affectflow import audio
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.serving.predict import invocations_payload
from affectflow.serving.pyfunc import ServingConfig, parse_input
from affectflow.serving.recognizer import load_model_dir, predict_audio, predict_features, predict_scores
from affectflow.tracking.uri import resolve_uri


@pytest.fixture(scope="module")
def pyfunc(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The logged model, loaded for local use: `path` rows switched on through MLflow's model_config."""
    t = trained(synth_root, tmp_path_factory)
    mlflow.set_tracking_uri(resolve_uri(t["params"].tracking.uri))
    uri = f"runs:/{t['result'].summary['mlflow_run_id']}/model"
    return t, mlflow.pyfunc.load_model(uri, model_config={"allow_path_input": True})


def test_paths_are_off_unless_the_model_config_turns_them_on(pyfunc):
    t, local = pyfunc
    uri = f"runs:/{t['result'].summary['mlflow_run_id']}/model"
    default = mlflow.pyfunc.load_model(uri)
    assert default.model_config == {"allow_path_input": False, "max_rows": 64, "max_audio_s": 600.0,
                                    "max_window_s": None, "hop_s": None, "deploy_stats": "", "prediction_log": "",
                                    "keep_audio": False}
    row = pd.DataFrame({"path": [read_manifest(t["manifest"]).iloc[0]["path"]]})
    with pytest.raises(ValueError, match=r"row 0, column 'path': file paths are not accepted by this model"):
        default.predict(row)
    assert len(local.predict(row)) == 1
    smaller = mlflow.pyfunc.load_model(uri, model_config={"max_rows": 1})
    wave = pd.DataFrame({"audio": [np.zeros(8000) + 0.01] * 2, "sample_rate": [16000] * 2})
    with pytest.raises(ValueError, match=r"2 rows; this model takes at most 1 per request \(model_config max_rows\)"):
        smaller.predict(wave)
    with pytest.raises(ValueError, match=r"model_config: max_rows: Input should be a valid integer"):
        mlflow.pyfunc.load_model(uri, model_config={"max_rows": "many"})


def test_pyfunc_predicts_from_a_file_path_like_the_trained_model(pyfunc):
    t, model = pyfunc
    row = read_manifest(t["manifest"]).query("split == 'test'").iloc[0]
    out = model.predict(pd.DataFrame({"path": [row["path"]]}))
    classes = t["result"].summary["classes"]
    dims = ["arousal", "valence"]  # the recognizer's dimensional head, after the classes
    assert list(out.columns) == [*classes, *dims, "label", "status"] and out["status"].tolist() == ["ok"]
    probs = out[classes].to_numpy()
    assert probs.shape == (1, len(classes)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Feature extraction inside the model = the features stage: same probabilities as from the store.
    rec = load_model_dir(t["result"].model_dir)
    stored = predict_features(rec, FeatureSet(t["features"]).load("logmel", [row["utt_id"]]))
    assert np.allclose(probs, stored, atol=1e-4)
    scored = predict_scores(rec, FeatureSet(t["features"]).load("logmel", [row["utt_id"]]))
    assert np.allclose(out[dims].to_numpy(dtype=float), scored.dimensions, atol=1e-4)
    assert out["label"].iloc[0] == classes[int(stored.argmax())]


def test_pyfunc_takes_waveforms_and_resamples_them(pyfunc):
    t, model = pyfunc
    path = read_manifest(t["manifest"]).iloc[0]["path"]
    wave = audio.load(path, 16000)
    same = model.predict(pd.DataFrame({"audio": [wave.astype(np.float64)], "sample_rate": [16000]}))
    from_path = model.predict(pd.DataFrame({"path": [path]}))
    classes = t["result"].summary["classes"]
    assert np.allclose(same[classes].to_numpy(), from_path[classes].to_numpy(), atol=1e-5)
    at_8k = audio.resample(wave, 16000, 8000)
    out = model.predict(pd.DataFrame({"audio": [at_8k.astype(np.float64)], "sample_rate": [8000]}))
    assert np.allclose(out[classes].sum(axis=1), 1.0, atol=1e-5)


def test_the_logged_model_carries_its_code_and_signature(pyfunc):
    t, model = pyfunc
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{t['result'].summary['mlflow_run_id']}/model"))
    assert (local / "code" / "affectflow" / "serving" / "recognizer.py").is_file()
    assert (local / "artifacts").is_dir() and any((local / "artifacts").rglob("model.json"))
    names = [c.name for c in model.metadata.get_input_schema().inputs]
    assert names == ["path", "audio", "sample_rate", "audio_b64"]


def test_inference_from_paths_and_arrays_agree(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    rec = load_model_dir(t["result"].model_dir)
    paths = read_manifest(t["manifest"])["path"].tolist()[:3]
    by_path = predict_audio(rec, paths)
    by_wave = predict_audio(rec, [audio.load(p, 16000) for p in paths])
    assert by_path.shape == (3, 4) and np.allclose(by_path, by_wave)


def test_parse_input_accepts_lists_and_rejects_nonsense(tmp_path: Path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, np.full(1600, 0.1, np.float32), 16000)
    sf.write(b, np.full(800, 0.1, np.float32), 8000)
    with pytest.raises(ValueError, match=r"row 0, column 'path': file paths are not accepted"):
        parse_input([str(a), str(b)])
    groups = parse_input([str(a), str(b)], ServingConfig(allow_path_input=True))
    assert [(ix, rate, [w.shape for w in waves]) for ix, waves, rate in groups] == [([0], 16000, [(1600,)]),
                                                                                     ([1], 8000, [(800,)])]
    mixed = parse_input(pd.DataFrame({"audio": [np.zeros(4), np.ones(4)], "sample_rate": [8000, 16000]}))
    assert sorted(r for _, _, r in mixed) == [8000, 16000]
    with pytest.raises(ValueError, match="needs an 'audio_b64', an 'audio' or a 'path' column"):
        parse_input(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="row 0"):
        parse_input(pd.DataFrame({"path": [None]}))


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


STEREO_RATE = 22050
"""Not the model's rate: encoded inputs must be resampled (and mixed to mono) like paths."""


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_pyfunc_scores_a_base64_file_like_its_path_and_its_waveform(pyfunc, tmp_path: Path, fmt: str):
    t, model = pyfunc
    classes = t["result"].summary["classes"]
    rate = t["params"].audio.sample_rate
    src = read_manifest(t["manifest"]).query("split == 'test'").iloc[0]["path"]
    mono = audio.load(src, STEREO_RATE)
    clip = tmp_path / f"clip.{fmt}"
    sf.write(clip, np.stack([mono, 0.5 * mono[::-1]], axis=1), STEREO_RATE, subtype="PCM_16")
    # One request mixing all three kinds of row: the columns a row leaves empty are None. MLflow
    # cannot pass an integer column with gaps, so files give their own header's rate.
    df = pd.DataFrame({"path": [str(clip), None, None],
                       "audio": [None, audio.load(clip, rate).astype(np.float64), None],
                       "sample_rate": [STEREO_RATE, rate, STEREO_RATE],
                       "audio_b64": [None, None, b64(clip)]})
    out = model.predict(df)
    probs = out[classes].to_numpy()
    assert probs.shape == (3, len(classes)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs[2], probs[0], atol=1e-6) and np.allclose(probs[1], probs[0], atol=1e-6)
    alone = model.predict(pd.DataFrame({"audio_b64": [b64(clip)]}))[classes].to_numpy()
    assert np.allclose(alone, probs[:1], atol=1e-6)
    # Not a mono mix-down or a resample away from the path input: a different signal scores differently.
    left_only = tmp_path / f"left.{fmt}"
    sf.write(left_only, mono, STEREO_RATE, subtype="PCM_16")
    other = model.predict(pd.DataFrame({"audio_b64": [b64(left_only)]}))[classes].to_numpy()
    assert not np.allclose(other, probs[:1], atol=1e-6)


def test_audio_b64_errors_name_the_row_and_the_column(tmp_path: Path):
    clip = tmp_path / "ok.wav"
    sf.write(clip, np.zeros(1600, np.float32), 16000)
    good = b64(clip)
    wrapped = "\n".join(good[i:i + 76] for i in range(0, len(good), 76))  # `base64` without -w0
    [(ix, [wave], rate)] = parse_input(pd.DataFrame({"audio_b64": [wrapped]}))
    assert ix == [0] and rate == 16000 and wave.shape == (1600,)
    with pytest.raises(ValueError, match=r"row 1, column 'audio_b64': not valid base64"):
        parse_input(pd.DataFrame({"audio_b64": [good, "this is not base64!"]}))
    with pytest.raises(ValueError, match=r"row 1, column 'audio_b64': not valid base64"):
        parse_input(pd.DataFrame({"audio_b64": [good, good[:-3]]}))  # truncated: bad padding
    junk = base64.b64encode(b"RIFF but not really a wave file" * 10).decode()
    with pytest.raises(ValueError, match=r"row 0, column 'audio_b64': 310 decoded bytes are not audio"):
        parse_input(pd.DataFrame({"audio_b64": [junk]}))
    with pytest.raises(ValueError, match=r"row 0, column 'audio_b64': expected a base64 string"):
        parse_input(pd.DataFrame({"audio_b64": [[0.1, 0.2]]}))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match=r"row 0, column 'audio_b64': empty audio"):
        parse_input(pd.DataFrame({"audio_b64": [b64(empty)]}))
    with pytest.raises(ValueError, match=r"row 0: column 'sample_rate' is 8000 but the 'audio_b64' file's header says 16000"):
        parse_input(pd.DataFrame({"audio_b64": [good], "sample_rate": [8000]}))


def test_a_row_must_set_exactly_one_audio_column():
    rows = pd.DataFrame({"path": ["a.wav", "b.wav", None], "audio": [None, None, [0.0, 0.1]],
                         "audio_b64": [None, "UklGRg==", "UklGRg=="]})
    with pytest.raises(ValueError, match=r"row 0, column 'path' \(a\.wav\): file not found"):
        parse_input(rows.iloc[:1], ServingConfig(allow_path_input=True))
    with pytest.raises(ValueError, match=r"row 1: 'path' and 'audio_b64' are both set; give exactly one"):
        parse_input(rows)
    with pytest.raises(ValueError, match=r"row 1: 'audio' and 'audio_b64' are both set"):
        parse_input(rows.iloc[[0, 2]])  # the row number is the position in the request
    with pytest.raises(ValueError, match=r"row 0: no audio is set"):
        parse_input(pd.DataFrame({"path": [""], "audio_b64": [float("nan")]}))
    with pytest.raises(ValueError, match=r"row 0: 'path' and 'audio' and 'audio_b64' are all set"):
        parse_input(pd.DataFrame({"path": ["a.wav"], "audio": [[0.0]], "audio_b64": ["UklGRg=="]}))


def test_invocations_payload_sends_files_as_base64_the_model_reads(pyfunc, tmp_path: Path):
    t, model = pyfunc
    classes = t["result"].summary["classes"]
    paths = read_manifest(t["manifest"]).query("split == 'test'")["path"].tolist()[:2]
    flac = tmp_path / "clip.flac"
    sf.write(flac, audio.load(paths[1], STEREO_RATE), STEREO_RATE)
    files = [paths[0], flac]
    body = invocations_payload(files=files)["dataframe_split"]
    assert body["columns"] == ["audio_b64"] and len(body["data"]) == 2
    served = model.predict(pd.DataFrame(body["data"], columns=body["columns"]))[classes].to_numpy()
    local = model.predict(pd.DataFrame({"path": [str(f) for f in files]}))[classes].to_numpy()
    assert np.allclose(served, local, atol=1e-6)
    waves = invocations_payload([np.zeros(3)], 8000)["dataframe_split"]  # the default stays float lists
    assert waves == {"columns": ["audio", "sample_rate"], "data": [[[0.0, 0.0, 0.0], 8000]]}
    with pytest.raises(ValueError, match="waves or files, not both"):
        invocations_payload([np.zeros(3)], 8000, files=files)
    with pytest.raises(ValueError, match="waves with their sample_rate"):
        invocations_payload([np.zeros(3)])


def test_a_failure_inside_the_model_is_logged_not_sent(pyfunc, caplog):
    """A fault that is not the input's: HTTP 500 with a message saying where the details are, and no
    traceback in what a client gets (MLflow would send `stack_trace`, with server paths)."""
    from mlflow.exceptions import MlflowException

    _, model = pyfunc
    inner = model.unwrap_python_model()
    wave = pd.DataFrame({"audio": [np.full(8000, 0.01)], "sample_rate": [16000]})

    class Broken:
        sample_rate = 16000

        def __call__(self, waves):
            raise RuntimeError("/srv/secret/path: feature extractor exploded")

    good, inner.featurizer = inner.featurizer, Broken()
    try:
        with pytest.raises(MlflowException) as err, caplog.at_level("ERROR"):
            inner.predict(None, wave)
    finally:
        inner.featurizer = good
    answer = json.loads(err.value.serialize_as_json())
    assert err.value.get_http_status_code() == 500 and "stack_trace" not in answer
    assert answer["message"] == ("affectflow pyfunc: internal error while scoring the request (RuntimeError; "
                                 "the traceback is in the server log)")
    assert "/srv/secret/path" not in answer["message"] and "/srv/secret/path" in caplog.text
    assert isinstance(err.value.__cause__, RuntimeError)  # kept for local callers' tracebacks
    bad = pd.DataFrame({"audio": [[float("nan")]], "sample_rate": [16000]})
    with pytest.raises(MlflowException) as client:
        inner.predict(None, bad)
    assert client.value.get_http_status_code() == 400 and isinstance(client.value, ValueError)


def _wav_b64(tmp_path: Path, seconds: float, name: str) -> str:
    path = tmp_path / name
    sf.write(path, np.zeros(int(16000 * seconds), np.float32) + 0.01, 16000)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_the_kserve_request_follows_the_pyfunc_limits(tmp_path: Path):
    """The v2 predictor takes the same max_rows / max_audio_s / min_duration_s as the MLflow server."""
    from types import SimpleNamespace

    from affectflow.serving.kserve import RequestError, request_audio

    def inputs(data: list[str]) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="audio", datatype="BYTES", data=data)]

    one = _wav_b64(tmp_path, 1.0, "one.wav")
    clips = request_audio(inputs([one, one]), ServingConfig(max_rows=2, max_audio_s=2.0), min_duration_s=0.5)
    assert [(len(w), r) for w, r in clips] == [(16000, 16000)] * 2
    with pytest.raises(RequestError, match=r"3 elements; this model takes at most 2 per request"):
        request_audio(inputs([one] * 3), ServingConfig(max_rows=2))
    with pytest.raises(RequestError, match=r"element 2: the request carries more than its limit of audio.*max_audio_s"):
        request_audio(inputs([one] * 3), ServingConfig(max_audio_s=2.5))
    short = _wav_b64(tmp_path, 0.1, "short.wav")
    with pytest.raises(RequestError, match=r"input 'audio' element 1.*too short: 0.100 s < 0.5 s"):
        request_audio(inputs([one, short]), None, min_duration_s=0.5)


def test_the_kserve_request_must_be_the_documented_shape(tmp_path: Path):
    """Another input name, an extra input or a shape that does not fit the elements: 400, not a guess."""
    from types import SimpleNamespace

    from affectflow.serving.kserve import RequestError, request_audio

    one = _wav_b64(tmp_path, 1.0, "one.wav")
    audio_in = SimpleNamespace(name="audio", datatype="BYTES", shape=[1], data=[one])
    assert len(request_audio([audio_in])) == 1
    cases = {
        r"no input named 'audio' among \['wave'\]": [SimpleNamespace(name="wave", datatype="BYTES", shape=[1], data=[one])],
        r"inputs \['extra'\] are not this model's": [audio_in, SimpleNamespace(name="extra", datatype="FP32", shape=[1], data=[1.0])],
        r"input 'audio': shape \[2, 1\] does not fit its 1 element\(s\); expected \[1\]":
            [SimpleNamespace(name="audio", datatype="BYTES", shape=[2, 1], data=[one])],
        r"input 'audio': datatype is FP32, expected BYTES": [SimpleNamespace(name="audio", datatype="FP32", shape=[1], data=[0.5])],
    }
    for message, request in cases.items():
        with pytest.raises(RequestError, match=message):
            request_audio(request)
