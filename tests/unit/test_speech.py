"""The speech check (`affectflow.speech`): no emotion without speech, in predict, the pyfunc, the
KServe predictor and ingest. Figures (false rejects on the corpora, detection of noise and music):
benchmarks/speech_check.py and benchmarks/RESULTS.md, not here."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from affectflow import speech
from affectflow.config import load_params
from affectflow.corpora.demo import utterance
from affectflow.speech import SpeechCheck, SpeechCheckUnavailable, measure

SR = 16000
CHECK = SpeechCheck(min_speech_s=0.25, threshold=0.2)


def speech_like() -> np.ndarray:
    """A generated clip Silero hears as speech throughout (checked in the first test)."""
    return utterance("neutral", speaker=0, seed=0, sr=SR, duration=1.5)


def silence() -> np.ndarray:
    return np.zeros(2 * SR, np.float32)


def white_noise() -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, 2 * SR).astype(np.float32)


def chord() -> np.ndarray:
    t = np.arange(2 * SR) / SR
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))).astype(np.float32)


def test_speech_passes_and_silence_noise_and_a_chord_do_not():
    assert measure(speech_like(), SR, 0.2) > 1.0
    assert CHECK.reason(speech_like(), SR) is None
    for wave in (silence(), white_noise(), chord()):
        why = CHECK.reason(wave, SR)
        assert why is not None and why.startswith("no speech: 0.00 s of speech < 0.25 s (audio.min_speech_s")


def test_other_rates_go_through_the_one_resampler_and_agree():
    at_8k = speech_like()[::2]  # decimated: still speech-like below 4 kHz
    assert CHECK.reason(at_8k, 8000) is None
    from affectflow import audio

    assert CHECK.reason(audio.resample(white_noise(), SR, 44100), 44100) is not None


def test_the_check_off_loads_nothing_and_passes_everything(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # an import would fail
    monkeypatch.setattr(speech, "_local", type(speech._local)())
    off = SpeechCheck.off()
    assert not off.enabled and off.reason(silence(), SR) is None


def test_without_the_package_the_check_fails_clearly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)
    monkeypatch.setattr(speech, "_local", type(speech._local)())
    with pytest.raises(SpeechCheckUnavailable, match=r"needs the silero-vad package.*audio.min_speech_s: 0"):
        CHECK.reason(white_noise(), SR)
    assert CHECK.reason(silence(), SR) is not None  # digital silence needs no model


def test_torch_threads_are_left_as_they_were():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        CHECK.reason(white_noise(), SR)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_streamed_blocks_count_like_the_whole_wave():
    wave = np.concatenate([silence(), speech_like(), silence()])
    counter = speech.SpeechCounter(SR, 0.2)
    for k in range(0, len(wave), 3000):  # blocks that do not line up with frames
        counter.feed(wave[k:k + 3000])
    assert abs(counter.finish() - measure(wave, SR, 0.2)) <= 2 * speech.FRAME / speech.VAD_RATE


def test_the_setting_comes_from_params_or_a_model_folder():
    params = load_params(None)
    assert SpeechCheck.from_audio_config(params.audio) == SpeechCheck(0.25, 0.2)
    assert SpeechCheck.from_audio_config({"sample_rate": 16000}) == SpeechCheck(0.25, 0.2)  # an older model.json
    assert SpeechCheck.from_audio_config({"sample_rate": 16000, "min_speech_s": 0.0}).enabled is False


# ----------------------------------------------------------------------------- the entry points
def _model_folder(tmp: Path, min_speech_s: float = 0.25) -> Path:
    from test_bad_input import model_folder

    folder = model_folder(tmp)
    meta = json.loads((folder / "model.json").read_text())
    meta["audio"]["min_speech_s"] = min_speech_s
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _pyfunc(folder: Path):
    from types import SimpleNamespace

    from affectflow.serving.pyfunc import AffectflowPyfunc

    model = AffectflowPyfunc()
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(folder)}, model_config={}))
    return model


def test_the_pyfunc_answers_no_speech_with_null_classes(tmp_path: Path):
    model = _pyfunc(_model_folder(tmp_path))
    rows = pd.DataFrame({"audio": [speech_like().astype(np.float64), silence().astype(np.float64),
                                   white_noise().astype(np.float64)], "sample_rate": [SR] * 3})
    out = model.predict(None, rows)
    classes = model.rec.classes
    assert out["status"].tolist() == ["ok", "no_speech", "no_speech"]
    assert out.loc[0, "label"] in classes and abs(sum(out.loc[0, classes]) - 1) < 1e-5
    assert out.loc[1:, [*classes, "label"]].isna().all().all()
    from mlflow.pyfunc.scoring_server import predictions_to_json  # what the server sends: null, not NaN

    buf = io.StringIO()
    predictions_to_json(out, buf)
    assert "NaN" not in buf.getvalue() and '"status": "no_speech"' in buf.getvalue()


def test_the_kserve_predictor_answers_no_speech_as_a_status(tmp_path: Path):
    from affectflow.serving.kserve import Loaded, response_outputs, score_request
    from affectflow.serving.pyfunc import ServingConfig
    from affectflow.serving.recognizer import Featurizer, load_model_dir

    rec = load_model_dir(_model_folder(tmp_path))
    loaded = Loaded("x", "1", rec, Featurizer(rec.meta), config=ServingConfig())
    probs, ok = score_request(loaded, [(speech_like(), SR), (silence(), SR)])
    assert ok == [True, False] and probs[1].tolist() == [0.0] * len(rec.classes)
    outs = {name: data for name, _, _, data in response_outputs(probs, ok, rec.classes)}
    assert outs["status"] == ["ok", "no_speech"] and outs["label"][1] == "" and outs["label"][0] in rec.classes


def test_predict_gives_silent_files_a_status_and_no_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from test_bad_input import params_file

    from affectflow import cli

    folder = _model_folder(tmp_path)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a_speech.wav", speech_like(), SR)
    sf.write(tmp_path / "in" / "b_silence.wav", silence(), SR)
    sf.write(tmp_path / "in" / "c_noise.flac", white_noise(), SR)
    # a long file in windows (predict.max_window_s 1 s): noise, then speech -> scored on its speech windows
    sf.write(tmp_path / "in" / "d_long.wav", np.concatenate([white_noise(), speech_like()]), SR)
    p = params_file(tmp_path, audio={"min_speech_s": 0.25}, predict={"max_window_s": 1.0, "hop_s": 1.0})
    out = tmp_path / "out.json"
    assert cli.main(["predict", str(tmp_path / "in"), "--params", str(p), "--model", str(folder),
                     "--out", str(out)]) == 0
    got = {Path(r["path"]).name: r for r in json.loads(out.read_text())["predictions"]}
    assert got["a_speech.wav"]["status"] == "ok" and got["a_speech.wav"]["label"] is not None
    assert got["d_long.wav"]["status"] == "ok" and got["d_long.wav"]["windows"] > 1
    for name in ("b_silence.wav", "c_noise.flac"):
        assert got[name]["status"] == "no_speech" and got[name]["label"] is None
        assert got[name]["probabilities"] is None and got[name]["error"].startswith("no speech:")
    assert "2 without speech (status no_speech, no label)" in capsys.readouterr().err


def test_ingest_quarantines_or_refuses_clips_without_speech(tmp_path: Path):
    from test_bad_input import corpus, params_file

    from affectflow.stages.ingest import IngestError, ingest

    labels = corpus(tmp_path / "mine", extra=[("audio/silent.wav", "spk0", "sad"), ("audio/noise.wav", "spk1", "sad")])
    sf.write(tmp_path / "mine" / "audio" / "silent.wav", silence(), SR)
    sf.write(tmp_path / "mine" / "audio" / "noise.wav", white_noise(), SR)
    for f in (tmp_path / "mine" / "audio").glob("s*_*.wav"):  # the corpus's own clips: speech
        sf.write(f, speech_like(), SR)
    assert labels.is_file()
    with pytest.raises(IngestError, match=r"(silent|noise)\.wav: no speech: 0\.00 s of speech < 0\.25 s.*"
                                          r"set ingest\.on_no_speech: skip"):
        ingest(load_params(params_file(tmp_path, audio={"min_speech_s": 0.25}, ingest={"on_no_speech": "fail"})))
    # the default quarantines them, even with on_bad_audio: fail (that policy is for broken files)
    res = ingest(load_params(params_file(tmp_path, audio={"min_speech_s": 0.25}, ingest={"on_bad_audio": "fail"})))
    q = pd.read_csv(res.out_dir / "quarantine.csv")
    assert sorted(Path(p).name for p in q["path"]) == ["noise.wav", "silent.wav"]
    assert q["reason"].str.startswith("no speech").all()
    assert res.summary["quarantined"] == 2 and res.summary["quarantine_reasons"] == {"no speech": 2}


def test_audio_b64_silence_is_no_speech_not_an_error(tmp_path: Path):
    model = _pyfunc(_model_folder(tmp_path))
    sf.write(tmp_path / "z.flac", silence(), SR)
    row = pd.DataFrame({"audio_b64": [base64.b64encode((tmp_path / "z.flac").read_bytes()).decode()]})
    assert model.predict(None, row)["status"].tolist() == ["no_speech"]


def test_the_cli_and_the_servers_score_a_long_clip_alike(tmp_path: Path):
    """A 25 s clip: `affectflow predict` reads it in windows (predict.max_window_s 10 s, mean over
    windows); the pyfunc and the KServe predictor cut the same windows and agree with it."""
    from affectflow.serving.kserve import Loaded, score_request
    from affectflow.serving.predict import load_backend, predict_paths
    from affectflow.serving.pyfunc import ServingConfig
    from affectflow.serving.recognizer import Featurizer, load_model_dir, predict_audio

    folder = _model_folder(tmp_path, min_speech_s=0.0)
    parts = [utterance(e, speaker=s, seed=s, sr=SR, duration=2.5) for s in range(4) for e in ("sad", "angry", "happy")]
    wave = np.concatenate(parts)[: 25 * SR].astype(np.float32)
    sf.write(tmp_path / "long.wav", wave, SR)
    params = load_params(None, {"audio.min_speech_s": 0.0, "predict.decode_workers": 1, "predict.threads": 1})
    cli = predict_paths(params, [str(tmp_path / "long.wav")], backend=load_backend(params, str(folder)))
    by_cli = cli.predictions[0].probabilities
    assert cli.predictions[0].windows == 3
    served = _pyfunc(folder).predict(None, pd.DataFrame({"audio": [wave.astype(np.float64)], "sample_rate": [SR]}))
    rec = load_model_dir(folder)
    by_pyfunc = served[rec.classes].to_numpy(np.float64)[0]
    by_kserve = score_request(Loaded("x", "1", rec, Featurizer(rec.meta), config=ServingConfig()), [(wave, SR)])[0][0]
    assert np.allclose(by_pyfunc, by_cli, atol=1e-4) and np.allclose(by_kserve, by_cli, atol=1e-4)
    whole = predict_audio(rec, [wave])[0]  # the clip in one piece: what the servers did before
    assert not np.allclose(whole, by_cli, atol=1e-4)
