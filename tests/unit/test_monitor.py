"""`affectflow monitor` (`affectflow.serving.monitor`, `serving.drift`): the logged window vs the
model's training clips; drift on a new recording condition, none on held-out speakers of the
training data; collapse; too little traffic gives no verdict; exit status 3 asks for retraining."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from base_settings import base_params
from scipy.signal import lfilter
from test_predict import CLASSES, SR, make_model_dir
from test_prediction_log import _pyfunc

from affectflow import cli
from affectflow.config import MonitorConfig
from affectflow.contracts.feature_store import feature_path, relative_file, save_array, write_index
from affectflow.contracts.manifest import write_manifest
from affectflow.corpora.demo import utterance
from affectflow.features.logmel import LogMel
from affectflow.serving import drift
from affectflow.serving.monitor import RETRAIN_EXIT, Reference, judge, run
from affectflow.serving.recognizer import read_model_meta


def test_psi_mmd_and_domain_auc_tell_a_shift_from_a_resample() -> None:
    rng = np.random.default_rng(0)
    ref, same, moved = rng.normal(size=(800, 8)), rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 0.8
    assert drift.psi(ref, same).max() < 0.15 < 0.25 < drift.psi(ref, moved).min()  # 200 clips: sampling noise ~0.05
    assert drift.mmd_test(ref, same, 200, seed=1).p_value > 0.05
    assert drift.mmd_test(ref, moved, 200, seed=1).p_value < 0.01
    assert drift.domain_auc(ref, same) < 0.6 < 0.9 < drift.domain_auc(ref, moved)


def test_class_shares_total_variation_and_confidence() -> None:
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.9, 0.05, 0.03, 0.02]])
    assert np.allclose(drift.class_shares(probs, 4), [2 / 3, 1 / 3, 0, 0])
    assert drift.total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    conf = drift.confidence(probs)
    assert conf["mean"] == pytest.approx(np.mean([0.7, 0.7, 0.9])) and sum(conf["histogram"]) == 3


def _window(summaries: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"summary": list(summaries), "probabilities": list(probs)})


def test_judge_flags_collapse_and_gives_no_verdict_on_too_little_traffic() -> None:
    rng = np.random.default_rng(0)
    ref = Reference(rng.normal(size=(300, 6)), dict.fromkeys(CLASSES, 0.25), 300)
    onto_one = np.tile([0.1, 0.7, 0.1, 0.1], (120, 1))
    got = judge(ref, _window(rng.normal(size=(120, 6)), onto_one), CLASSES, MonitorConfig(min_clips=100))
    assert got["collapse"] and not got["drift"] and got["action"] == "retrain" and "'happy'" in got["reason"]
    assert got["prior_shift"]  # all 'happy' vs a uniform prior
    few = judge(ref, _window(rng.normal(size=(20, 6)), onto_one[:20]), CLASSES, MonitorConfig(min_clips=100))
    assert few["status"] == "insufficient" and few["action"] == "none"


# ----------------------------------------------------------------------------- end to end
def _mic(wave: np.ndarray, seed: int) -> np.ndarray:
    """Another recording condition: a tinny band-limited microphone with hiss."""
    rng = np.random.default_rng(seed)
    x = lfilter([1.0, -0.97], [1.0], wave)  # strong high-frequency tilt
    return (0.5 * x / (np.abs(x).max() + 1e-9) + 0.02 * rng.normal(size=len(x))).astype(np.float32)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model folder, the manifest + feature store of its training clips (generated speakers 0-11)."""
    root = tmp_path_factory.mktemp("monitor")
    model_dir = make_model_dir(root / "model", seed=4)
    params = base_params({})
    rows, store = [], root / "features"
    meta = read_model_meta(model_dir)
    mel = LogMel(params.features.logmel, SR)
    for spk in range(12):
        for k, emo in enumerate(CLASSES * 2):
            wave = utterance(emo, speaker=spk, seed=100 * spk + k, sr=SR, duration=1.0)
            sha = f"{spk:02d}{k:02d}" + "0" * 60
            array = mel.batch([wave])[0]
            save_array(feature_path(store, "logmel", meta.feature_key or "k", sha), array)
            rows.append({"utt_id": f"synth/{spk}/{k}", "sha256": sha, "speaker": f"synth/{spk}", "emotion": emo,
                         "corpus": "synth", "split": "train", "shape": list(array.shape)})
    manifest = pd.DataFrame(rows)
    write_index(store, pd.DataFrame([{"utt_id": r["utt_id"], "kind": "logmel", "key": meta.feature_key or "k",
                                      "file": relative_file("logmel", meta.feature_key or "k", r["sha256"]),
                                      "shape": r["shape"]} for r in rows]))
    manifest = manifest.drop(columns="shape")
    for c in ("path", "role", "gender", "label", "valence", "arousal", "duration", "sample_rate", "channels", "fold"):
        manifest[c] = None
    write_manifest(manifest, root / "manifest.parquet")
    return {"root": root, "model": model_dir, "features": store, "manifest": root / "manifest.parquet"}


def _serve(model_dir: Path, log: Path, waves: list[np.ndarray]) -> None:
    py = _pyfunc(model_dir, log)
    for i in range(0, len(waves), 16):
        py.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves[i:i + 16]],
                                       "sample_rate": [SR] * len(waves[i:i + 16])}))
    py.rec.recorder.log.flush()


def _traffic(speakers: range, condition: bool) -> list[np.ndarray]:
    out = []
    for spk in speakers:
        for k, emo in enumerate(CLASSES * 2):
            w = utterance(emo, speaker=spk, seed=7 * spk + k, sr=SR, duration=1.0)
            out.append(_mic(w, spk * 31 + k) if condition else w)
    return out


def test_monitor_flags_a_new_recording_condition_and_not_held_out_speakers(deployment, tmp_path) -> None:
    params = base_params({"paths.workdir": str(tmp_path / "w"), "monitor.min_clips": 40, "monitor.collapse_share": 1.0,
                          "predict.threads": 1})
    inputs = {"model": str(deployment["model"]), "features": deployment["features"], "manifest": deployment["manifest"]}
    _serve(deployment["model"], tmp_path / "same", _traffic(range(40, 46), condition=False))
    same = run(params, {**inputs, "log": str(tmp_path / "same")}, tmp_path / "r_same")
    assert same.summary["status"] == "judged" and same.summary["clips"] == 48
    assert not same.summary["drift"], same.summary
    _serve(deployment["model"], tmp_path / "new", _traffic(range(40, 46), condition=True))
    new = run(params, {**inputs, "log": str(tmp_path / "new")}, tmp_path / "r_new")
    assert new.summary["drift"] and new.summary["action"] == "retrain" and new.exit_code == RETRAIN_EXIT
    report = (tmp_path / "r_new" / "report.md").read_text()
    assert "**drift**" in report and "![psi.png](psi.png)" in report and (tmp_path / "r_new" / "psi.png").is_file()
    assert json.loads((tmp_path / "r_new" / "result.json").read_text())["action"] == "retrain"
    assert "<table" in (tmp_path / "r_new" / "report.html").read_text()


def test_the_cli_exit_status_tells_a_schedule_to_retrain(deployment, tmp_path, capsys) -> None:
    log = tmp_path / "log"
    _serve(deployment["model"], log, _traffic(range(50, 56), condition=True))
    argv = ["monitor", "--model", str(deployment["model"]), "--log", str(log), "--features", str(deployment["features"]),
            "--manifest", str(deployment["manifest"]), "--out", str(tmp_path / "out"),
            "--set", f"paths.workdir={tmp_path / 'w'}", "--set", "monitor.min_clips=40",
            "--set", "monitor.collapse_share=1.0"]
    assert cli.main(argv) == RETRAIN_EXIT
    assert "action retrain" in capsys.readouterr().err
    old = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)  # a week later than the window: nothing to judge
    params = base_params({"paths.workdir": str(tmp_path / "w"), "monitor.min_clips": 40})
    later = run(params, {"model": str(deployment["model"]), "log": str(log), "features": deployment["features"],
                         "manifest": deployment["manifest"]}, tmp_path / "later", now=old)
    assert later.summary["status"] == "insufficient" and later.exit_code == 0


def test_new_speakers_of_the_training_population_are_the_null_not_drift() -> None:
    """Speech features tell speakers apart: a window of 4 unseen speakers separates from the
    training speakers (AUC above monitor.auc_threshold), as the reference's own speaker splits do;
    only a window that separates further (another recording condition) is drift."""
    rng = np.random.default_rng(1)
    speakers = np.repeat(np.arange(16), 60)
    ref = Reference(rng.normal(size=(16, 6))[speakers] + 0.5 * rng.normal(size=(960, 6)),
                    dict.fromkeys(CLASSES, 0.25), 960, np.char.add("synth/", speakers.astype(str)))
    window = rng.normal(size=(4, 6))[np.repeat(np.arange(4), 30)] + 0.5 * rng.normal(size=(120, 6))
    probs = rng.dirichlet(np.ones(4), size=120)
    cfg = MonitorConfig(min_clips=100)
    new_speakers = judge(ref, _window(window, probs), CLASSES, cfg)
    assert new_speakers["domain_auc"] > cfg.auc_threshold and not new_speakers["drift"], new_speakers
    assert max(new_speakers["null_aucs"]) + cfg.null_margin == pytest.approx(new_speakers["auc_needed"], abs=1e-4)
    moved = judge(ref, _window(window * 0.5 + 1.5, probs), CLASSES, cfg)
    assert moved["drift"] and moved["domain_auc"] > moved["auc_needed"]
    without_null = judge(ref, _window(window, probs), CLASSES, cfg.model_copy(update={"null_splits": 0}))
    assert without_null["drift"]  # the fixed threshold alone flags every new speaker population
