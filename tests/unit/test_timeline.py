"""Timelines for long recordings: streamed overlapping windows, smoothing, cells that tile the
file, a planted emotion change located within one hop, the CLI's JSON / CSV / PNG outputs, and
silence inside a recording as `no_speech` segments (the real Silero check: the generated
utterances are speech to it, digital silence is not)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from recognizer_support import trained

from affectflow.config import TimelineConfig
from affectflow.corpora.demo import utterance
from affectflow.serving.timeline import score_timeline, smooth, smooth_speech, windows
from affectflow.speech import SpeechCheck

SR = 16000


def _speech(emotion: str, seconds: float, speaker: int, seed: int) -> np.ndarray:
    """Generated clips of one emotion and speaker, back to back, cut to `seconds`."""
    parts, n = [], 0
    while n < seconds * SR:
        parts.append(utterance(emotion, speaker, seed + len(parts), SR, duration=1.2))
        n += len(parts[-1])
    return np.concatenate(parts)[: int(seconds * SR)]


def _planted(path: Path, first: str, second: str, change_s: float, total_s: float, speaker: int = 9) -> Path:
    x = np.concatenate([_speech(first, change_s, speaker, 500), _speech(second, total_s - change_s, speaker, 900)])
    sf.write(path, x, SR, subtype="PCM_16")
    return path


def test_windows_stream_overlapping_blocks_and_the_last_ends_at_the_end(tmp_path: Path):
    path = tmp_path / "ramp.wav"
    # 1 kHz (the lowest rate audio.py accepts); the ramp steps every 0.1 s
    sf.write(path, (np.arange(10_500) // 100 % 100 / 100).astype(np.float32), 1000)
    got = list(windows(path, 1000, TimelineConfig(window_s=3.0, hop_s=1.0)))
    assert [(a, b) for a, b, _ in got] == [(float(s), s + 3.0) for s in range(8)] + [(7.5, 10.5)]
    assert all(len(w) == 3000 for _, _, w in got)
    assert np.allclose(got[-1][2][[0, -1]], [0.75, 0.04], atol=1e-3)  # the tail window holds the file's last samples


def test_cells_tile_the_recording_and_smoothing_keeps_rows_summing_to_one(tmp_path: Path):
    path = _planted(tmp_path / "x.wav", "sad", "angry", 4.0, 9.5)
    t = score_timeline(path, lambda ws: np.tile([0.9, 0.1], (len(ws), 1)), ["a", "b"], SR,
                       TimelineConfig(window_s=2.0, hop_s=0.5, smooth=3))
    lo, hi = t.cells()
    assert lo[0] == 0 and hi[-1] == pytest.approx(9.5) and np.allclose(lo[1:], hi[:-1])
    p = smooth(np.random.default_rng(0).dirichlet([1, 1, 1], 20), 5)
    assert np.allclose(p.sum(1), 1)


def _log_energy(w: np.ndarray) -> float:
    """Mean log energy of 20 ms frames: linear in how much of a window is each emotion."""
    frames = w[: len(w) // 320 * 320].reshape(-1, 320)
    return float(np.mean(np.log(np.mean(frames**2, axis=1) + 1e-8)))


def _loudness_model() -> callable:
    """A stand-in recognizer: loud = angry (the generated angry clips are 4x as loud as sad), its
    threshold halfway between pure sad and pure angry audio of another speaker."""
    mid = (_log_energy(_speech("sad", 6, 3, 1)) + _log_energy(_speech("angry", 6, 3, 2))) / 2

    def predict(ws: list[np.ndarray]) -> np.ndarray:
        p_angry = 1 / (1 + np.exp(-4 * (np.array([_log_energy(w) for w in ws]) - mid)))
        return np.c_[1 - p_angry, p_angry]

    return predict


@pytest.mark.parametrize("change_s", [5.3, 7.0])
def test_a_planted_change_is_located_within_one_hop_by_a_stand_in_model(tmp_path: Path, change_s: float):
    cfg = TimelineConfig(window_s=2.0, hop_s=0.5, smooth=3)
    t = score_timeline(_planted(tmp_path / "x.wav", "sad", "angry", change_s, 14.0), _loudness_model(),
                       ["sad", "angry"], SR, cfg, batch_size=4)
    runs = t.changes()
    assert [r["label"] for r in runs] == ["sad", "angry"]
    assert abs(runs[1]["start_s"] - change_s) <= cfg.hop_s


def _two_class_model(synth_root: Path, factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained here on the generated corpus's sad and angry clips (the shared 4-class test
    model is trained for 3 epochs only and confuses angry with happy)."""
    from recognizer_support import corpus, tiny_params

    from affectflow.stages.train.stage import train

    params, manifest, features = corpus(synth_root, factory)
    params = tiny_params(params, **{"ingest.classes": ["sad", "angry"], "train.epochs": 12})
    return train(params, manifest, features, factory.mktemp("two-class")).model_dir


def test_a_trained_model_locates_a_planted_change_within_one_hop(synth_root: Path,
                                                                tmp_path_factory: pytest.TempPathFactory,
                                                                tmp_path: Path):
    from affectflow.serving.recognizer import load_model_dir, predict_audio

    rec = load_model_dir(_two_class_model(synth_root, tmp_path_factory))
    cfg = TimelineConfig(window_s=1.2, hop_s=0.4, smooth=3)
    for change_s in (6.2, 9.0):
        t = score_timeline(_planted(tmp_path / "x.wav", "sad", "angry", change_s, 16.0),
                           lambda ws: predict_audio(rec, ws), rec.classes, rec.meta.sample_rate, cfg)
        runs = t.changes()
        assert [r["label"] for r in runs] == ["sad", "angry"], runs
        assert abs(runs[1]["start_s"] - change_s) <= cfg.hop_s, runs


def test_predict_timeline_cli_writes_json_csv_and_png(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path):
    from affectflow.cli import main
    from affectflow.config import params_yaml

    tr = trained(synth_root, tmp_path_factory)
    params = tr["params"]
    (tmp_path / "params.yaml").write_text(params_yaml(params))
    long = _planted(tmp_path / "call.wav", "sad", "angry", 6.0, 12.0)
    base = ["predict", "--params", str(tmp_path / "params.yaml"), "--model", str(tr["result"].model_dir),
            "--timeline", "--set", "predict.timeline.window_s=1.2", "--set", "predict.timeline.hop_s=0.4"]
    assert main([*base, str(long), "--out", str(tmp_path / "t.json")]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    (one,) = doc["timelines"]
    assert one["path"] == str(long) and one["hop_s"] == 0.4 and one["duration_s"] == pytest.approx(12.0)
    seg = one["segments"]
    assert seg[0]["start_s"] == 0 and seg[-1]["end_s"] == pytest.approx(12.0)
    assert all(abs(sum(s["probabilities"].values()) - 1) < 1e-3 for s in seg)
    assert one["dimensions"] == ["arousal", "valence"]
    assert all(set(s["dimensions"]) == {"arousal", "valence"} and -1 <= s["dimensions"]["arousal"] <= 1 for s in seg)
    assert (tmp_path / "t.png").stat().st_size > 0
    assert main([*base, str(long), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "t.csv"), "--allow-errors"]) == 0
    rows = (tmp_path / "t.csv").read_text().splitlines()
    # the class columns, then the dimensional head's arousal / valence per segment
    assert rows[0] == "path,start_s,end_s,status,label," + ",".join([*params.ingest.classes, "arousal", "valence"])
    assert len(rows) == 1 + len(seg) and (tmp_path / "t.png").exists()


def test_waveform_windows_match_the_streamed_file(tmp_path: Path):
    from affectflow.serving.timeline import wave_windows

    x = (np.arange(12_340) % 97 / 97).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, 1000, subtype="FLOAT")  # 1 kHz: the lowest rate audio.py accepts
    cfg = TimelineConfig(window_s=2.0, hop_s=0.7)
    a, b = list(windows(path, 1000, cfg)), list(wave_windows(x, 1000, 1000, cfg))
    assert [(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]
    assert all(np.array_equal(u, v) for (_, _, u), (_, _, v) in zip(a, b, strict=True))


def test_the_kserve_predictor_serves_a_timeline_on_request(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                          tmp_path: Path):
    pytest.importorskip("kserve", reason="the `serving` extra (kserve) is not installed")
    import asyncio
    import base64

    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest

    from affectflow.serving.kserve import Resolver, make_model
    from affectflow.serving.recognizer import load_model_dir, predict_audio

    folder = str(trained(synth_root, tmp_path_factory)["result"].model_dir)
    model = make_model("affectflow-ser", folder, 0, Resolver(None))
    model.load()
    long = _planted(tmp_path / "x.wav", "sad", "angry", 4.0, 8.0)
    clip = base64.b64encode(long.read_bytes()).decode("ascii")

    def ask(data: list[str], **parameters) -> dict:
        req = InferRequest("affectflow-ser", [InferInput("audio", [len(data)], "BYTES", data)], parameters=parameters)
        return {o.name: o for o in asyncio.run(model.predict(req)).outputs}

    got = ask([clip], timeline=True, window_s=1.2, hop_s=0.4)
    rec = load_model_dir(folder)
    want = score_timeline(long, lambda ws: predict_audio(rec, ws), rec.classes, rec.meta.sample_rate,
                          TimelineConfig(window_s=1.2, hop_s=0.4))
    n = len(want.starts)
    assert got["start_s"].shape == [n] and got["probabilities"].shape == [n, len(rec.classes)]
    assert np.allclose(np.asarray(got["probabilities"].data).reshape(n, -1), want.probabilities, atol=1e-4)
    assert list(got["label"].data) == want.labels and got["end_s"].data[-1] == pytest.approx(8.0)
    # the model has a dimensional head: arousal / valence per segment, and per clip in an ordinary request
    assert set(got) == {"start_s", "end_s", "probabilities", "label", "status", "dimensions"}
    assert got["dimensions"].shape == [n, 2] and got["dimensions"].parameters["dimensions"] == "arousal,valence"
    assert set(ask([clip])) == {"probabilities", "label", "status", "dimensions"}
    with pytest.raises(InvalidInput, match="one recording, got 2"):
        ask([clip, clip], timeline=True)
    with pytest.raises(InvalidInput, match=r"hop_s \(2.0\) must not exceed window_s"):
        ask([clip], timeline=True, window_s=1.0, hop_s=2.0)


# ----------------------------------------------------------------------------- silence inside a recording
CHECK = SpeechCheck(min_speech_s=0.25, threshold=0.2)
CHANGE_S, SILENT = 5.3, (9.0, 13.0)
"""sad until 5.3 s, angry until 9 s, digital silence until 13 s, sad again until 17 s."""


def _with_silence(path: Path) -> Path:
    x = np.concatenate([_speech("sad", CHANGE_S, 9, 500), _speech("angry", SILENT[0] - CHANGE_S, 9, 900),
                        np.zeros(int((SILENT[1] - SILENT[0]) * SR), np.float32), _speech("sad", 4.0, 9, 1300)])
    sf.write(path, x, SR, subtype="PCM_16")
    return path


def _voiced_loudness_model() -> callable:
    """`_loudness_model` on the frames that are not digital silence (a window half in a pause is
    judged by its speech, as a recognizer would be, not made "sad" by the zeros)."""
    def voiced(w: np.ndarray) -> np.ndarray:
        frames = w[: len(w) // 320 * 320].reshape(-1, 320)
        energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
        return w[: len(frames) * 320].reshape(-1, 320)[energy > 1e-9].ravel()

    loudness = _loudness_model()
    return lambda ws: loudness([voiced(w) for w in ws])


def test_silence_inside_a_recording_is_no_speech_and_the_change_is_still_located(tmp_path: Path):
    cfg = TimelineConfig(window_s=2.0, hop_s=0.5, smooth=3)
    t = score_timeline(_with_silence(tmp_path / "call.wav"), _voiced_loudness_model(), ["sad", "angry"], SR, cfg,
                       batch_size=4, speech=CHECK)
    inside = (t.starts >= SILENT[0]) & (t.ends <= SILENT[1])  # windows wholly in the silence
    assert inside.sum() == 5 and not t.has_speech[inside].any()
    speech_s = np.clip(np.minimum(t.ends, SILENT[0]) - t.starts, 0, None) + np.clip(t.ends - np.maximum(t.starts, SILENT[1]), 0, None)
    assert (speech_s >= 1.0).sum() > 20 and t.has_speech[speech_s >= 1.0].all()  # a second of speech is never dropped
    for seg, ok in zip(t.segments(), t.has_speech, strict=True):
        assert seg["status"] == ("ok" if ok else "no_speech")
        assert (seg["label"] is None and seg["probabilities"] is None) == (not ok)
    runs = t.changes()
    assert [(r["status"], r["label"]) for r in runs] == [("ok", "sad"), ("ok", "angry"), ("no_speech", None),
                                                         ("ok", "sad")], runs
    assert abs(runs[1]["start_s"] - CHANGE_S) <= cfg.hop_s
    gap = runs[2]
    assert SILENT[0] <= gap["start_s"] <= SILENT[0] + cfg.window_s / 2 and gap["confidence"] is None
    assert SILENT[1] - cfg.window_s / 2 <= gap["end_s"] <= SILENT[1]
    assert t.to_json()["n_no_speech"] == int((~t.has_speech).sum())
    assert (t.probabilities[~t.has_speech] == 0).all() and np.allclose(t.probabilities[t.has_speech].sum(1), 1)


def test_smoothing_never_crosses_a_window_without_speech():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mask = np.array([True, True, False, True, True])
    got = smooth_speech(probs, mask, 3)
    assert np.array_equal(got, probs)  # each side is constant: nothing leaks across the gap
    assert not np.array_equal(smooth(probs, 3), probs)  # (what smoothing over the gap would do)
    assert np.allclose(smooth_speech(probs, np.ones(5, bool), 3), smooth(probs, 3))  # no gap: as before


def _speech_model_folder(tmp: Path) -> Path:
    """test_bad_input's tiny model folder with the speech check on in its model.json."""
    from test_bad_input import model_folder

    folder = model_folder(tmp)
    meta = json.loads((folder / "model.json").read_text())
    meta["audio"].update(min_speech_s=CHECK.min_speech_s, speech_threshold=CHECK.threshold)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_predict_timeline_cli_marks_silence_no_speech_in_json_and_csv(tmp_path: Path):
    from test_bad_input import params_file

    from affectflow.cli import main

    folder = _speech_model_folder(tmp_path)
    long = _with_silence(tmp_path / "call.wav")
    base = ["predict", "--params", str(params_file(tmp_path)), "--model", str(folder), "--timeline",
            "--set", "predict.timeline.window_s=2.0", "--set", "predict.timeline.hop_s=0.5", str(long)]
    assert main([*base, "--out", str(tmp_path / "t.json")]) == 0
    (one,) = json.loads((tmp_path / "t.json").read_text())["timelines"]
    seg = one["segments"]
    quiet = [s for s in seg if s["status"] == "no_speech"]
    assert quiet and one["n_no_speech"] == len(quiet)
    assert all(s["label"] is None and s["probabilities"] is None for s in quiet)
    assert all(SILENT[0] <= s["start_s"] and s["end_s"] <= SILENT[1] for s in quiet)
    assert all(s["label"] and abs(sum(s["probabilities"].values()) - 1) < 1e-3 for s in seg if s["status"] == "ok")
    assert [r["status"] for r in one["changes"]].count("no_speech") == 1
    assert (tmp_path / "t.png").stat().st_size > 0
    assert main([*base, "--out", str(tmp_path / "t.csv")]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "t.csv").read_text().splitlines()))
    assert [r["status"] for r in rows] == [s["status"] for s in seg]
    classes = json.loads((folder / "model.json").read_text())["classes"]
    assert all(r["label"] == "" and all(r[c] == "" for c in classes) for r in rows if r["status"] == "no_speech")


def test_the_kserve_timeline_carries_a_status_per_segment(tmp_path: Path):
    pytest.importorskip("kserve", reason="the `serving` extra (kserve) is not installed")
    import asyncio
    import base64

    from kserve.protocol.infer_type import InferInput, InferRequest

    from affectflow.serving.kserve import Resolver, make_model
    from affectflow.serving.recognizer import load_model_dir, predict_audio

    folder = str(_speech_model_folder(tmp_path))
    model = make_model("affectflow-ser", folder, 0, Resolver(None))
    model.load()
    long = _with_silence(tmp_path / "call.wav")
    req = InferRequest("affectflow-ser", [InferInput("audio", [1], "BYTES", [base64.b64encode(long.read_bytes()).decode()])],
                       parameters={"timeline": True, "window_s": 2.0, "hop_s": 0.5})
    got = {o.name: o for o in asyncio.run(model.predict(req)).outputs}
    rec = load_model_dir(folder)
    cfg = TimelineConfig(window_s=2.0, hop_s=0.5)
    want = score_timeline(long, lambda ws: predict_audio(rec, ws), rec.classes, rec.meta.sample_rate, cfg, speech=CHECK)
    n = len(want.starts)
    status = list(got["status"].data)
    assert got["status"].shape == [n] and status == want.statuses and "no_speech" in status and "ok" in status
    probs = np.asarray(got["probabilities"].data).reshape(n, -1)
    labels = list(got["label"].data)
    quiet = np.array(status) == "no_speech"
    assert (probs[quiet] == 0).all() and {labels[k] for k in np.flatnonzero(quiet)} == {""}
    assert np.allclose(probs[~quiet], want.probabilities[~quiet], atol=1e-4) and np.allclose(probs[~quiet].sum(1), 1)
    assert all(lab in rec.classes for lab, q in zip(labels, quiet, strict=True) if not q)
