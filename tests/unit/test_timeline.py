"""Timelines for long recordings: streamed overlapping windows, smoothing, cells that tile the
file, a planted emotion change located within one hop, the CLI's JSON / CSV / PNG outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from recognizer_support import trained

from affectflow.config import TimelineConfig
from affectflow.corpora.demo import utterance
from affectflow.serving.timeline import score_timeline, smooth, windows

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
    assert (tmp_path / "t.png").stat().st_size > 0
    assert main([*base, str(long), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "t.csv"), "--allow-errors"]) == 0
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "path,start_s,end_s,label," + ",".join(params.ingest.classes)
    assert len(rows) == 1 + len(seg) and (tmp_path / "t.png").exists()


def test_waveform_windows_match_the_streamed_file(tmp_path: Path):
    from affectflow.serving.timeline import wave_windows

    x = (np.arange(12_345) % 97 / 97).astype(np.float32)
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
    assert set(ask([clip])) == {"probabilities", "label", "status"}  # an ordinary request is unchanged
    with pytest.raises(InvalidInput, match="one recording, got 2"):
        ask([clip, clip], timeline=True)
    with pytest.raises(InvalidInput, match=r"hop_s \(2.0\) must not exceed window_s"):
        ask([clip], timeline=True, window_s=1.0, hop_s=2.0)
