"""Deployment statistics (`affectflow.serving.deployment`): audio of an unknown corpus is
standardised by the traffic before it, never by the batch it arrives in; the statistics persist with
the deployment and reset; the streamed protocol of the generalization study uses only the past."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from affectflow.contracts.model_folder import DeployNormalization, ModelMeta, parse_meta
from affectflow.models import build_model
from affectflow.models.data import NormStats, compute_stats, normalize
from affectflow.serving.deployment import Deployment, DeploymentStats, DeploymentStatsError, StateFile
from affectflow.serving.recognizer import Recognizer, predict_features, predict_stream
from affectflow.studies.generalization import streamed_probabilities

CLASSES = ["angry", "happy", "neutral", "sad"]
DIM = 12


def _recognizer(min_clips: int = 5, window: int = 1000, mode: str = "running") -> Recognizer:
    torch.manual_seed(0)
    model = build_model("egemaps_mlp", {"hidden": [8], "dropout": 0.0}, DIM, len(CLASSES)).eval()
    prior = NormStats(mode="global", mean=[0.0] * DIM, std=[1.0] * DIM)
    meta = ModelMeta(arch="egemaps_mlp", classes=CLASSES, feature="egemaps", feature_config={},
                     feature_key="egemaps-test", audio={"sample_rate": 16000}, normalization=prior.as_dict(),
                     deploy_normalization=DeployNormalization(mode=mode, min_clips=min_clips, window=window),
                     arch_config={"hidden": [8], "dropout": 0.0}, input_dim=DIM)
    return Recognizer(model, meta, torch.device("cpu"))


def _clips(n: int, seed: int = 0, shift: float = 3.0) -> list[np.ndarray]:
    """Clips of a recording condition far from the training one (offset and scaled)."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=DIM) * 2.0 + shift).astype(np.float32) for _ in range(n)]


def test_the_running_statistics_are_those_of_the_clips_seen_until_the_window() -> None:
    clips = _clips(30)
    st = DeploymentStats(prior=NormStats("global", [0.0] * DIM, [1.0] * DIM), min_clips=5, window=1000)
    for c in clips:
        st.update(c)
    exact = compute_stats(clips, "global")
    got = st.current()
    assert np.allclose(got.mean, exact.mean) and np.allclose(got.std, exact.std)


def test_after_the_window_old_traffic_fades() -> None:
    st = DeploymentStats(prior=NormStats("global", [0.0] * DIM, [1.0] * DIM), min_clips=2, window=20)
    for c in _clips(200, shift=0.0):
        st.update(c)
    for c in _clips(200, seed=1, shift=10.0):  # the microphone changed
        st.update(c)
    assert abs(float(np.mean(st.current().mean)) - 10.0) < 0.5  # follows the new condition


def test_each_clip_is_standardised_by_the_clips_before_it_and_pooled_until_min_clips() -> None:
    clips = _clips(12)
    prior = NormStats("global", [0.0] * DIM, [1.0] * DIM)
    out = DeploymentStats(prior=prior, min_clips=5, window=1000).normalise(clips)
    for k in range(5):
        assert np.allclose(out[k], normalize(clips[k], prior))
    for k in range(5, 12):
        assert np.allclose(out[k], normalize(clips[k], compute_stats(clips[:k], "global")), atol=1e-5)


def test_a_clip_gets_the_same_prediction_alone_and_inside_any_batch() -> None:
    """The 25-angry-clips case in the library: the same clips scored in one call, in batches of any
    size, or one call at a time give the same probabilities; a clip's label never depends on the clips
    after it."""
    clips = _clips(25)
    together = predict_features(_recognizer(), clips)
    rec = _recognizer()
    one_by_one = np.concatenate([predict_features(rec, [c]) for c in clips])
    rec = _recognizer()
    in_sevens = np.concatenate([predict_features(rec, clips[i:i + 7]) for i in range(0, 25, 7)])
    assert np.allclose(together, one_by_one, atol=1e-6) and np.allclose(together, in_sevens, atol=1e-6)
    # below min_clips (a fresh deployment) a clip alone is scored exactly as inside the batch
    fresh = _recognizer(min_clips=50)
    alone = np.concatenate([predict_features(_recognizer(min_clips=50), [c]) for c in clips])
    assert np.allclose(predict_features(fresh, clips), alone, atol=1e-6)


def test_the_whole_set_is_only_used_when_asked() -> None:
    clips = _clips(25)
    rec = _recognizer()
    offline = predict_features(rec, clips, whole_set=True)
    assert rec.deployment.stats.clips == 0  # offline scoring leaves the deployment untouched
    together = compute_stats(clips, "global")
    want = torch.softmax(rec.model(torch.from_numpy(np.stack([normalize(c, together) for c in clips])), None), -1)
    assert np.allclose(offline, want.detach().numpy(), atol=1e-5)


def test_the_statistics_persist_with_the_deployment_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "deploy" / "stats.json"
    clips = _clips(20)
    rec = _recognizer()
    rec.attach_deployment(path)
    first = predict_features(rec, clips[:10])
    rec.deployment.save()
    assert json.loads(path.read_text())["clips"] == 10
    restarted = _recognizer()  # a new process: the statistics come back from the file
    restarted.attach_deployment(path)
    assert restarted.deployment.stats.clips == 10
    continuous = predict_features(_recognizer(), clips)
    assert np.allclose(np.concatenate([first, predict_features(restarted, clips[10:])]), continuous, atol=1e-6)
    assert StateFile(path).delete() and not path.exists()
    assert Deployment(_recognizer().meta, path).stats.clips == 0  # reset: pooled statistics again


def test_a_state_of_other_features_or_a_broken_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    st = DeploymentStats(prior=NormStats("global", [0.0] * DIM, [1.0] * DIM), feature_key="compare-other")
    st.update(_clips(1)[0])
    StateFile(path).write(st)
    with pytest.raises(DeploymentStatsError, match="feature_key"):
        Deployment(_recognizer().meta, path)
    path.write_text(json.dumps({**st.to_json(), "feature_key": "egemaps-test", "mean": [1.0, 2.0]}))
    with pytest.raises(DeploymentStatsError, match="mean"):
        Deployment(_recognizer().meta, path)
    path.write_text("{not json")
    with pytest.raises(DeploymentStatsError, match="not JSON"):
        Deployment(_recognizer().meta, path)


def test_folders_written_with_the_batch_rule_get_the_running_statistics() -> None:
    data = _recognizer().meta.to_json()
    data["deploy_normalization"] = {"mode": "set", "min_clips": 20}
    assert parse_meta(data, "model.json").deploy_normalization.mode == "running"


def test_the_streamed_scorer_uses_only_the_past() -> None:
    """Changing the clips that arrive later never changes an earlier clip's prediction; the pooled
    reference ignores the traffic altogether."""
    rec = _recognizer()
    clips = _clips(30)
    base = predict_stream(rec, clips)
    later = clips[:15] + _clips(15, seed=9, shift=-20.0)
    assert np.allclose(predict_stream(rec, later)[:15], base[:15], atol=1e-6)
    assert not np.allclose(predict_stream(rec, later)[16:], base[16:], atol=1e-3)
    assert rec.deployment.stats.clips == 0  # each stream starts fresh
    # the study's wrapper: manifest order in and out, the order of arrival seeded
    a = streamed_probabilities(rec, clips, CLASSES, seed=0)
    b = streamed_probabilities(rec, clips, CLASSES, seed=1)
    assert a.shape == (30, 4) and not np.allclose(a, b, atol=1e-4)
    pooled = streamed_probabilities(rec, clips, CLASSES, seed=0, pooled=True)
    assert np.allclose(pooled, streamed_probabilities(rec, clips, CLASSES, seed=1, pooled=True), atol=1e-6)


def test_the_deploy_stats_command_shows_and_resets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from affectflow import cli
    from affectflow.contracts.model_folder import write_model_folder

    rec = _recognizer()
    folder = write_model_folder(tmp_path / "model", rec.model, rec.meta)
    path = tmp_path / "stats.json"
    rec.attach_deployment(path)
    predict_features(rec, _clips(7))
    rec.deployment.save()
    argv = ["--params", str(tmp_path / "none.yaml"), "--model", str(folder), "--path", str(path)]
    (tmp_path / "none.yaml").write_text("paths:\n  workdir: " + str(tmp_path / "work") + "\n")
    assert cli.main(["deploy-stats", "show", *argv]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["clips_seen"] == 7 and shown["using"] == "traffic" and shown["mode"] == "running"
    path.write_text("{broken")  # a broken state can still be reset
    assert cli.main(["deploy-stats", "reset", *argv]) == 0
    assert not path.exists()
    assert cli.main(["deploy-stats", "show", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["clips_seen"] == 0
