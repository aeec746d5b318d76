"""Features on real speech: a 40-clip RAVDESS subset (10 actors, both genders) through ingest ->
features in worker processes: shapes, exact frame counts, agreement with a per-clip computation,
eGeMAPS that tell women's from men's voices, and a warm re-run that computes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from base_settings import base_params

from affectflow import audio
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.features.egemaps import Egemaps
from affectflow.features.logmel import LogMel
from affectflow.stages.features import extract_features
from affectflow.stages.ingest import ingest

pytestmark = pytest.mark.integration

N_CLIPS = 40


@pytest.fixture(scope="module")
def subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RAVDESS-layout folder of symlinks to 40 real clips (4 from each of actors 1-10); no audio copied."""
    root = tmp_path_factory.mktemp("ravdess_subset") / "ravdess"
    for actor in range(1, 11):
        src = sorted((shared_data / "ravdess" / f"Actor_{actor:02d}").glob("*.flac"))[::15][:4]
        assert len(src) == 4
        (root / src[0].parent.name).mkdir(parents=True)
        for f in src:
            (root / f.parent.name / f.name).symlink_to(f)
    return root


def test_features_on_ravdess_subset(subset: Path, tmp_path: Path) -> None:
    params = base_params({
        "paths.workdir": str(tmp_path / "work"), "paths.data_root": str(subset.parent),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
        "splits.n_folds": 2, "ingest.workers": 2, "features.workers": 2,
        "features.kinds": ["logmel", "egemaps"],
    })
    man = ingest(params).manifest
    df = read_manifest(man)
    assert len(df) == N_CLIPS
    out = tmp_path / "features"
    cold = extract_features(params, man, out)
    n = df["sha256"].nunique()
    assert {k: v["computed"] for k, v in cold.summary["kinds"].items()} == {"logmel": n, "egemaps": n}
    index = pd.read_parquet(cold.index)
    assert len(index) == 2 * N_CLIPS and set(index["utt_id"]) == set(df["utt_id"])

    fs = FeatureSet(out)
    ids = df["utt_id"].tolist()
    mels = fs.load("logmel", ids)
    for path, m in zip(df["path"], mels, strict=True):
        assert m.shape == (64, 1 + audio.info(path).frames // 160)  # 16 kHz FLAC: no resampling
        assert np.isfinite(m).all()
    lm = LogMel(params.features.logmel, params.audio.sample_rate)
    np.testing.assert_allclose(mels[7], lm.reference(audio.load(df["path"].iloc[7], 16000)), atol=2e-4, rtol=1e-4)

    X = fs.matrix("egemaps", ids)
    assert X.shape == (N_CLIPS, 88) and np.isfinite(X).all()
    names = Egemaps(params.features.egemaps).smiles["egemaps"].feature_names
    f0 = X[:, names.index("F0semitoneFrom27.5Hz_sma3nz_amean")]
    female = (df["gender"] == "female").to_numpy()
    assert 0 < female.sum() < N_CLIPS
    assert f0[female].mean() > f0[~female].mean() + 3  # women speak several semitones higher

    warm = extract_features(params, man, out)
    assert all(v["computed"] == 0 and v["cached"] == n for v in warm.summary["kinds"].values())
    assert warm.summary["audio_seconds_computed"] == 0
