"""The augment stage end to end on small generated feature folders: artifact format, report, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from base_settings import base_params

from affectflow.config import Params
from affectflow.contracts.feature_store import INDEX, feature_path, save_array
from affectflow.contracts.manifest import COLUMNS, write_manifest
from affectflow.contracts.synthetic import REQUIRED_FIELDS, SyntheticFormatError
from affectflow.contracts.synthetic import read_synthetic as load_synthetic
from affectflow.stages.augment.data import Standardizer, crop_segments, load_real_set
from affectflow.stages.augment.stage import augment

SCORES = ("realness", "agreement", "nn_distance", "knn_inside")

CLASSES = ["neutral", "happy", "sad", "angry"]
N_MELS = 12
HELD_OUT_VALUE = 1e6
"""Val/test features are filled with this, so any leak into the generator's data is visible."""


def make_feature_folder(root: Path, speakers: int = 6, per_class: int = 5, seed: int = 0) -> pd.DataFrame:
    """Manifest + features folder: class-dependent Gaussian eGeMAPS-like vectors (88,) and log-mels
    (N_MELS, 30..60 frames). Speakers 0-1 are test, 2 is val, the rest train."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3.0, (len(CLASSES), 88))
    bands = rng.normal(0, 2.0, (len(CLASSES), N_MELS))
    rows, index = [], []
    for s in range(speakers):
        split = "test" if s < 2 else ("val" if s == 2 else "train")
        for ci, c in enumerate(CLASSES):
            for i in range(per_class):
                uid = f"fake/{s:02d}-{c}-{i}"
                sha = hashlib.sha256(uid.encode()).hexdigest()
                rows.append({"utt_id": uid, "path": f"/nowhere/{uid}.wav", "corpus": "fake", "role": "source",
                             "speaker": f"fake/{s:02d}", "gender": "female" if s % 2 else "male", "label": c,
                             "emotion": c, "valence": np.nan, "arousal": np.nan, "duration": 1.0,
                             "sample_rate": 16000, "channels": 1, "sha256": sha, "fold": s % 3, "split": split})
                vec = means[ci] + rng.normal(0, 1.0, 88)
                t = int(rng.integers(30, 60))
                mel = bands[ci][:, None] + rng.normal(0, 0.5, (N_MELS, t)) - 4.0
                if split != "train":
                    vec, mel = np.full_like(vec, HELD_OUT_VALUE), np.full_like(mel, HELD_OUT_VALUE)
                for kind, arr in (("egemaps", vec), ("logmel", mel)):
                    f = feature_path(root, kind, "cfg", sha)
                    save_array(f, arr)
                    index.append({"utt_id": uid, "kind": kind, "key": "cfg", "file": str(f.relative_to(root)),
                                  "shape": list(arr.shape)})
    pd.DataFrame(index).to_parquet(root / INDEX, index=False)
    return pd.DataFrame(rows)[COLUMNS]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("aug")
    df = make_feature_folder(root / "features")
    write_manifest(df, root / "manifest.parquet")
    return root / "manifest.parquet", root / "features"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread (tests/conftest.py)."""


def small_params(tmp_path: Path, **overrides: object) -> Params:
    return base_params({
        "ingest.classes": CLASSES,
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.artifact_location": str(tmp_path / "mlartifacts"),
        "augment.epochs": 4, "augment.latent_dim": 8, "augment.hidden": [32, 32], "augment.batch_size": 16,
        "augment.conv_channels": [4, 8], "augment.segment_frames": 24, "augment.segments_per_clip": 2,
        "augment.samples_per_class": 12, "augment.aaec_gru_hidden": 8, "augment.embedding_pca": 8,
        "augment.agreement_hidden": [], "augment.device": "cpu", "augment.knn_k": 3,
        **overrides,
    })


def test_real_set_is_training_split_only(fake: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, features = fake
    real = load_real_set(small_params(tmp_path), manifest, features)
    assert real.X.shape == (3 * 4 * 5, 88) and real.kind == "egemaps"
    assert np.abs(real.X).max() < HELD_OUT_VALUE / 10  # no val/test vectors
    assert set(real.speakers) == {"fake/03", "fake/04", "fake/05"}
    assert np.bincount(real.y).tolist() == [15, 15, 15, 15]
    seg = load_real_set(small_params(tmp_path, **{"augment.feature": "logmel"}), manifest, features)
    assert seg.X.shape == (3 * 4 * 5 * 2, N_MELS, 24) and np.abs(seg.X).max() < HELD_OUT_VALUE / 10


def test_crop_segments_and_standardizer() -> None:
    rng = np.random.default_rng(0)
    arr = np.arange(40, dtype=np.float32).reshape(2, 20)
    crops = crop_segments(arr, 8, 3, rng)
    assert crops.shape == (3, 2, 8)
    for c in crops:  # contiguous windows of the clip
        start = int(c[0, 0])
        assert np.array_equal(c, arr[:, start : start + 8])
    short = crop_segments(arr[:, :5], 8, 2, rng)
    assert short.shape == (2, 2, 8) and short[0, 0, 5:].tolist() == [0.0, 0.0, 0.0]  # padded with the minimum
    X = rng.normal(5, 3, (50, 4, 10)).astype(np.float32)
    std = Standardizer.fit(X)
    Z = std.transform(X)
    assert np.allclose(Z.mean(axis=(0, 2)), 0, atol=1e-4) and np.allclose(Z.std(axis=(0, 2)), 1, atol=1e-3)
    assert np.allclose(std.inverse(Z), X, atol=1e-4)


def _check_synthetic(out: Path, n_per_class: int, sample_shape: tuple[int, ...], feature: str) -> dict:
    with np.load(out / "synthetic.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert {*REQUIRED_FIELDS, *SCORES, "generator"} <= set(arrays)
    n = len(CLASSES) * n_per_class
    assert arrays["X"].shape == (n, *sample_shape) and arrays["X"].dtype == np.float32
    assert arrays["y"].dtype == np.int64 and np.bincount(arrays["y"]).tolist() == [n_per_class] * len(CLASSES)
    assert arrays["classes"].tolist() == CLASSES and str(arrays["feature"]) == feature
    for k in ("realness", "agreement", "nn_distance"):
        assert arrays[k].shape == (n,) and np.isfinite(arrays[k]).all()
    assert arrays["kept"].dtype == bool and arrays["knn_inside"].dtype == bool
    assert ((arrays["agreement"] >= 0) & (arrays["agreement"] <= 1)).all()
    assert (arrays["nn_distance"] >= 0).all()
    # Samples are in the original feature scale (not standardised): near the real training data.
    assert np.abs(arrays["X"]).max() < HELD_OUT_VALUE / 10
    return arrays


def test_augment_egemaps_wgan_writes_the_contract(fake: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, features = fake
    params = small_params(tmp_path)
    res = augment(params, manifest, features, tmp_path / "augment", track=False)
    arrays = _check_synthetic(res.out_dir, 12, (88,), "egemaps")
    report = json.loads(res.report_json.read_text())
    th = report["thresholds"]
    # kept = every criterion passes (keep_fraction 1), recomputed from the stored scores.
    rmin = np.array([th["realness_min"][CLASSES[c]] for c in arrays["y"]])
    expected = ((arrays["realness"] >= rmin) & (arrays["agreement"] >= th["label_tau"])
                & arrays["knn_inside"] & (arrays["nn_distance"] > th["delta"]))
    assert np.array_equal(arrays["kept"], expected)
    # Report: per-class generated / kept counts match the file; metrics before and after filtering.
    assert report["generator"] == "wgan_gp" and report["feature"] == "egemaps" and report["n_real"] == 60
    # 2 of the 15 clips per class are held out of generator training to calibrate realness.
    assert report["n_real_calibration"] == 8 and report["n_real_generator"] == 52
    for ci, c in enumerate(CLASSES):
        row = report["per_class"][c]
        assert row["real"] == 15 and row["generated"] == 12
        assert row["kept"] == int(arrays["kept"][arrays["y"] == ci].sum())
        assert set(row["passed"]) == {"realness", "agreement", "manifold", "novelty"}
    assert report["totals"]["kept"] == int(arrays["kept"].sum())
    m = report["metrics"]
    assert "PCA(8)" in m["embedding"]
    for key in ("before", "after", "before_size_matched"):
        assert set(m[key]) == {"n", "frechet", "precision", "recall"}
    assert m["before"]["n"] == 48 and m["after"]["n"] == report["totals"]["kept"]
    assert m["before"]["frechet"] > 0 and 0 <= m["before"]["precision"] <= 1
    assert report["training"]["epochs"] == 4 and report["training"]["epoch_seconds_mean"] > 0
    for png in report["plots"]:
        assert (res.out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = res.report_md.read_text()
    assert "| angry | 15 | 12 |" in md and "Fréchet" in md and "![projection.png](projection.png)" in md
    # The consumer-side reader returns kept rows only, unless asked for all.
    assert len(load_synthetic(res.out_dir).X) == int(arrays["kept"].sum())
    assert len(load_synthetic(res.synthetic, kept_only=False).X) == 48


def test_augment_logmel_aaec_unfiltered(fake: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, features = fake
    params = small_params(tmp_path, **{"augment.feature": "logmel", "augment.generator": "aaec",
                                       "augment.filters": [], "augment.epochs": 3})
    res = augment(params, manifest, features, tmp_path / "augment", track=False)
    arrays = _check_synthetic(res.out_dir, 12, (N_MELS, 24), "logmel")
    assert arrays["kept"].all()  # no filter switched on
    report = json.loads(res.report_json.read_text())
    assert report["filters"] == [] and report["n_real"] == 120 and report["n_real_clips"] == 60
    assert report["metrics"]["after"]["n"] == 48


def test_keep_fraction_and_mlflow_run(fake: tuple[Path, Path], tmp_path: Path) -> None:
    import mlflow

    manifest, features = fake
    params = small_params(tmp_path, **{"augment.filters": [], "augment.keep_fraction": 0.25})
    res = augment(params, manifest, features, tmp_path / "augment")
    arrays = _check_synthetic(res.out_dir, 12, (88,), "egemaps")
    assert np.bincount(arrays["y"][arrays["kept"]]).tolist() == [3, 3, 3, 3]
    for c in range(4):  # the kept ones are the most real of their class
        r = arrays["realness"][arrays["y"] == c]
        k = arrays["kept"][arrays["y"] == c]
        assert r[k].min() >= r[~k].max()
    run = mlflow.get_run(res.mlflow_run_id)
    assert run.data.tags["stage"] == "augment" and run.data.params["augment.keep_fraction"] == "0.25"
    assert run.data.metrics["kept"] == 12 and "before_frechet" in run.data.metrics
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(res.mlflow_run_id, "augment")}
    assert {"augment/report.json", "augment/projection.png"} <= names


def test_cli_augment(fake: tuple[Path, Path], tmp_path: Path) -> None:
    from affectflow.cli import main

    manifest, features = fake
    out = tmp_path / "cli_out"
    rc = main(["augment", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
               "--no-track", "--set", "ingest.classes=[neutral, happy, sad, angry]", "--set", "augment.epochs=2",
               "--set", "augment.hidden=[16]", "--set", "augment.samples_per_class=5",
               "--set", "augment.agreement_hidden=[]", "--set", "augment.device=cpu"])
    assert rc == 0
    assert len(load_synthetic(out, kept_only=False).y) == 20
    # A wrong manifest path is a clean error naming the file.
    assert main(["augment", "--manifest", str(tmp_path / "missing.parquet"), "--features", str(features),
                 "--out", str(out), "--no-track"]) == 1


def test_load_synthetic_names_missing_fields(tmp_path: Path) -> None:
    np.savez(tmp_path / "synthetic.npz", X=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(SyntheticFormatError, match=r"synthetic.npz: missing field\(s\) \['classes', 'feature', 'kept'\]"):
        load_synthetic(tmp_path)
    with pytest.raises(FileNotFoundError, match="no synthetic set"):
        load_synthetic(tmp_path / "nowhere")


def test_calibration_split_holds_out_whole_clips_per_class() -> None:
    from affectflow.stages.augment.data import calibration_split

    clips = np.repeat([f"c{i}" for i in range(20)], 3)  # 3 segments per clip
    y = np.repeat(np.arange(20) % 2, 3)
    held = calibration_split(clips, y, 0.2, seed=0)
    for c in np.unique(clips):  # a clip is wholly held out or wholly used
        assert len(set(held[clips == c])) == 1
    assert [len(np.unique(clips[held & (y == k)])) for k in (0, 1)] == [2, 2]
    assert not calibration_split(clips, y, 0.0, seed=0).any()
    # A class with a single clip keeps it for the generator.
    assert not calibration_split(np.array(["a", "b", "b"]), np.array([0, 1, 1]), 0.5, seed=0)[0]
