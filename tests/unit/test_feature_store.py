"""The sharded feature store and what decides its contents: kinds derived from the enabled stages
and the model, shard round trip, reuse across a grown manifest, resume after a run killed
mid-shard (no half shard trusted), corrupt and non-finite shards named, scale-out shards gathered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affectflow.config import Params, load_params, with_overrides
from affectflow.contracts import feature_store as store
from affectflow.contracts.feature_store import FeatureSet, FeatureStoreError, write_index, write_shard
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.stages.features import extract_features, shards, stage
from affectflow.stages.ingest import ingest
from affectflow.stages.runner import feature_kinds, with_feature_kinds


# ----------------------------------------------------------------------------- which kinds
def test_kinds_follow_the_enabled_stages_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("affectflow.stages.frontend.missing", lambda checkpoint: None)  # weights or not
    shipped = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert shipped.features.kinds == []  # an addition, not the whole list
    assert feature_kinds(shipped) == ["ssl"]  # the demo computes the Whisper features only
    assert feature_kinds(with_overrides(shipped, {"train.model": "compare_mlp"})) == ["compare"]
    assert feature_kinds(with_overrides(shipped, {"train.model": "cnn_bigru"})) == ["logmel"]
    # switched-on stages add what they read; extra kinds come after, once each
    aug = with_overrides(shipped, {"augment.enabled": True, "augment.feature": "egemaps",
                                   "features.kinds": ["ssl", "compare"]})
    assert feature_kinds(aug) == ["egemaps", "ssl", "compare"]
    off = with_overrides(shipped, {"augment.enabled": False, "augment.feature": "logmel"})
    assert "logmel" not in feature_kinds(off)
    # what every task is handed: the features task computes them, validate checks them
    assert with_feature_kinds(aug).features.kinds == ["egemaps", "ssl", "compare"]
    assert with_feature_kinds(aug).features.egemaps == aug.features.egemaps


def test_studies_still_ask_for_the_kinds_they_read(tmp_path: Path) -> None:
    from affectflow.models import feature_kind
    from affectflow.studies import dann, generalization

    shipped = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    study = generalization.study_params(shipped, tmp_path)
    assert {"egemaps", "compare"} <= set(feature_kinds(study))  # the eGeMAPS reference and the cells' model
    assert feature_kinds(dann.study_params(shipped)) == [feature_kind(shipped.studies.dann.model)]


# ----------------------------------------------------------------------------- the contract
def _rng_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{i:064x}": rng.normal(size=(3, 5 + i)).astype(np.float32) for i in range(n)}


def _index_of(records: list[store.ShardRecord], arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for rec in records:
        for clip, shape in rec.shapes.items():
            rows.append({"utt_id": f"u{clip[-3:]}", "kind": "logmel", "key": "k", "file": rec.file,
                         "shape": list(shape), "member": clip, "shard_sha256": rec.sha256})
    return pd.DataFrame(rows)


def test_shard_round_trip_and_records(tmp_path: Path) -> None:
    arrays = _rng_arrays(6)
    clips = list(arrays)
    recs = [write_shard(tmp_path, "logmel", "k", {c: arrays[c] for c in clips[:4]}),
            write_shard(tmp_path, "logmel", "k", {c: arrays[c] for c in clips[4:]})]
    assert len({r.file for r in recs}) == 2 and all(r.file.endswith(".npz") for r in recs)
    write_index(tmp_path, _index_of(recs, arrays))
    fs = FeatureSet(tmp_path)
    got = fs.load("logmel", [f"u{c[-3:]}" for c in reversed(clips)])
    for c, a in zip(reversed(clips), got, strict=True):
        np.testing.assert_array_equal(a, arrays[c])
    found, refused = store.catalogue(tmp_path, "logmel", "k")
    assert set(found) == set(clips) and refused == []
    assert found[clips[5]].shapes[clips[5]] == (3, 10)
    # the same clips give the same shard name: a re-run or a parallel writer never makes a second copy
    assert store.shard_id(clips[:4]) == store.shard_id(list(reversed(clips[:4])))


def test_corrupt_shard_is_named_by_reader_and_catalogue(tmp_path: Path) -> None:
    arrays = _rng_arrays(3)
    rec = write_shard(tmp_path, "logmel", "k", arrays)
    write_index(tmp_path, _index_of([rec], arrays))
    path = tmp_path / rec.file
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match=rf"{path.name}.*sha256 does not match"):
        FeatureSet(tmp_path).load("logmel", ["u000"])
    found, refused = store.catalogue(tmp_path, "logmel", "k")
    assert found == {} and len(refused) == 1 and path.name in refused[0] and "corrupt" in refused[0]


def test_non_finite_arrays_are_refused_where_written_and_read(tmp_path: Path) -> None:
    arrays = _rng_arrays(2)
    bad = dict(arrays)
    clip = list(bad)[1]
    bad[clip] = bad[clip].copy()
    bad[clip][0, 0] = np.nan
    with pytest.raises(FeatureStoreError, match=rf"clip {clip}.*non-finite"):
        write_shard(tmp_path, "logmel", "k", bad)
    assert not list(tmp_path.rglob("*.npz"))  # nothing written
    # an older single-array store with a NaN in it: refused on read, naming the clip and the file
    store.save_array(tmp_path / "old" / "a.npy", bad[clip])
    write_index(tmp_path / "old", pd.DataFrame([{"utt_id": "ravdess/x", "kind": "egemaps", "key": "k",
                                                 "file": "a.npy", "shape": [3, 6]}]))
    with pytest.raises(FeatureStoreError, match=r"a\.npy.*ravdess/x.*non-finite"):
        FeatureSet(tmp_path / "old").load("egemaps", ["ravdess/x"])
    assert np.isnan(FeatureSet(tmp_path / "old").load("egemaps", ["ravdess/x"], finite=False)[0]).any()


# ----------------------------------------------------------------------------- the stage
@pytest.fixture
def small(synth_params: Params, tmp_path: Path) -> tuple[Params, pd.DataFrame]:
    p = with_overrides(synth_params, {"features.kinds": ["logmel"], "features.workers": 1})
    return p, read_manifest(ingest(p, tmp_path / "ingest").manifest)


def _write(df: pd.DataFrame, path: Path) -> Path:
    write_manifest(df.reset_index(drop=True), path)
    return path


def test_grown_manifest_computes_only_new_clips(small, tmp_path: Path, monkeypatch) -> None:
    p, df = small
    first = _write(df.iloc[: len(df) // 2], tmp_path / "first.parquet")
    grown = _write(df, tmp_path / "grown.parquet")
    extract_features(p, first, tmp_path / "v1")
    decoded: list[str] = []
    real_load = stage.audio.load
    monkeypatch.setattr(stage.audio, "load", lambda path, *a, **k: decoded.append(path) or real_load(path, *a, **k))
    # a fresh store (a new pipeline run's output) reusing the previous store's shards
    res = extract_features(with_overrides(p, {"features.previous": str(tmp_path / "v1")}), grown, tmp_path / "v2")
    n_old, n_new = df.iloc[: len(df) // 2]["sha256"].nunique(), df["sha256"].nunique()
    assert res.summary["kinds"]["logmel"]["cached"] == n_old
    assert res.summary["kinds"]["logmel"]["computed"] == n_new - n_old
    assert sorted(decoded) == sorted(set(df["path"]) - set(df.iloc[: len(df) // 2]["path"]))
    ids = df["utt_id"].tolist()
    reference = extract_features(p, grown, tmp_path / "clean")
    for a, b in zip(FeatureSet(tmp_path / "v2").load("logmel", ids), FeatureSet(reference.out_dir).load("logmel", ids),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_killed_run_resumes_without_trusting_a_half_shard(small, tmp_path: Path, monkeypatch) -> None:
    p, df = small
    p = with_overrides(p, {"features.shards": 3})
    man = _write(df, tmp_path / "m.parquet")
    out = tmp_path / "features"
    real = stage.write_shard
    calls = {"n": 0}

    def killed_during_second(root, kind, key, arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the .npz is in place, the process dies before its record
            name = store.shard_id(list(arrays))
            path = Path(root) / store.shard_folder(kind, key) / f"{name}.npz"
            path.write_bytes(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        return real(root, kind, key, arrays)

    monkeypatch.setattr(stage, "write_shard", killed_during_second)
    with pytest.raises(KeyboardInterrupt):
        extract_features(p, man, out)
    assert not (out / "index.parquet").exists()
    monkeypatch.setattr(stage, "write_shard", real)
    res = extract_features(p, man, out)
    n = df["sha256"].nunique()
    first_shard = len(shards._plan_shards([0] * n, 3)[0])  # type: ignore[list-item]
    assert res.summary["kinds"]["logmel"]["cached"] == first_shard  # the one whole shard is kept
    assert res.summary["kinds"]["logmel"]["computed"] == n - first_shard
    assert len(res.summary["shards_refused"]) == 1 and "without a record" in res.summary["shards_refused"][0]
    ids = df["utt_id"].tolist()
    clean = extract_features(p, man, tmp_path / "clean")
    for a, b in zip(FeatureSet(out).load("logmel", ids), FeatureSet(clean.out_dir).load("logmel", ids), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_corrupt_shard_is_recomputed_by_the_stage(small, tmp_path: Path) -> None:
    p, df = small
    man = _write(df.head(6), tmp_path / "m.parquet")
    out = tmp_path / "features"
    extract_features(p, man, out)
    shard = next(out.rglob("*.npz"))
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    with pytest.raises(FeatureStoreError, match=shard.name):
        FeatureSet(out).load("logmel", df.head(6)["utt_id"].tolist())
    again = extract_features(p, man, out)
    assert again.summary["kinds"]["logmel"]["computed"] == df.head(6)["sha256"].nunique()
    assert shard.name in again.summary["shards_refused"][0]
    assert len(FeatureSet(out).load("logmel", df.head(6)["utt_id"].tolist())) == 6


def test_scale_out_shards_gather_into_the_same_store(small, tmp_path: Path) -> None:
    """What the cluster's ParallelFor does, in-process: shard i of n into its own folder each, then
    the gather (a plain run reusing them) computes nothing and indexes everything."""
    p, df = small
    man = _write(df, tmp_path / "m.parquet")
    p = with_overrides(p, {"features.shards": 3})
    assert shards.shards_to_compute(p, man) == 3
    parts = []
    for i in range(3):
        res = extract_features(p, man, tmp_path / f"part{i}", shard=i)
        assert not (tmp_path / f"part{i}" / "index.parquet").exists()
        parts.append(tmp_path / f"part{i}")
    total = sum(len(list(part.rglob("*.npz"))) for part in parts)
    assert total == 3 and res.summary["shard"] == [2, 3]
    gathered = extract_features(p, man, tmp_path / "store", previous=parts)
    assert gathered.summary["kinds"]["logmel"]["computed"] == 0
    assert gathered.summary["kinds"]["logmel"]["cached"] == df["sha256"].nunique()
    clean = extract_features(p, man, tmp_path / "clean")
    ids = df["utt_id"].tolist()
    for a, b in zip(FeatureSet(tmp_path / "store").load("logmel", ids), FeatureSet(clean.out_dir).load("logmel", ids),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_study_reading_another_kind_computes_it_beside_the_runs_store(small, tmp_path: Path) -> None:
    """The augmentation study reads eGeMAPS (`studies.augmentation.model`); a pipeline store that holds
    only the run's own kind gets a study store with it, not a KeyError halfway through the study."""
    from affectflow.studies.augmentation import _with_kind

    p, df = small
    man = _write(df.head(4), tmp_path / "m.parquet")
    run_store = extract_features(p, man, tmp_path / "features").out_dir  # log-mel only
    assert _with_kind(p, "logmel", man, run_store, tmp_path / "study") == run_store
    study_store = _with_kind(p, "egemaps", man, run_store, tmp_path / "study")
    assert study_store == tmp_path / "study" / "features"
    assert FeatureSet(study_store).matrix("egemaps", df.head(4)["utt_id"].tolist()).shape == (4, 88)


def test_a_non_finite_array_from_an_extractor_stops_the_stage_naming_the_audio(small, tmp_path: Path,
                                                                               monkeypatch) -> None:
    from affectflow.features import logmel

    p, df = small
    man = _write(df.head(3), tmp_path / "m.parquet")
    real = logmel.LogMel.batch

    def nan_batch(self, waves):
        out = real(self, waves)
        out[0] = np.full_like(out[0], np.nan)
        return out

    monkeypatch.setattr(logmel.LogMel, "batch", nan_batch)
    with pytest.raises(shards.FeaturesError, match=r"\.wav: 'logmel' features are non-finite; not stored"):
        extract_features(p, man, tmp_path / "features")
    assert not list((tmp_path / "features").rglob("*.npz"))


def test_the_next_run_reuses_the_deployments_store_with_nothing_set_by_hand(small, tmp_path: Path, monkeypatch) -> None:
    """`features.store` as shipped (the deployment's shared store under paths.workdir): a second run on
    a grown manifest, into a fresh output folder as every pipeline run has, with no `previous` given,
    decodes and computes only the new clips; the cluster's way (shard tasks + gather) adds to the
    same store; each run's output stays a complete store of its own."""
    shipped = load_params(None).features.store
    assert shipped
    p, df = small
    p = with_overrides(p, {"features.store": shipped})
    assert stage.store_location(p) == str(Path(p.paths.workdir) / shipped)
    half = len(df) // 2
    first = _write(df.iloc[:half], tmp_path / "first.parquet")
    grown = _write(df, tmp_path / "grown.parquet")
    one = extract_features(p, first, tmp_path / "run1")
    assert one.summary["store"] == {"location": stage.store_location(p), "shards_added": 1}
    decoded: list[str] = []
    real_load = stage.audio.load
    monkeypatch.setattr(stage.audio, "load", lambda path, *a, **k: decoded.append(path) or real_load(path, *a, **k))
    two = extract_features(p, grown, tmp_path / "run2")
    n_old, n_new = df.iloc[:half]["sha256"].nunique(), df["sha256"].nunique()
    assert (two.summary["kinds"]["logmel"]["cached"], two.summary["kinds"]["logmel"]["computed"]) == (n_old, n_new - n_old)
    assert sorted(decoded) == sorted(set(df["path"]) - set(df.iloc[:half]["path"]))
    assert two.summary["store"]["shards_added"] == 1
    # run 2's output holds every clip by itself (run 1's shard linked in, not referenced)
    ids = df["utt_id"].tolist()
    import shutil

    shutil.rmtree(tmp_path / "run1")
    assert len(FeatureSet(tmp_path / "run2").load("logmel", ids)) == len(ids)
    # the cluster's way into another deployment's store: 2 shard tasks, then the gather adds their shards
    # to the store, and the next run there computes nothing
    q = with_overrides(p, {"features.shards": 2, "features.store": str(tmp_path / "deploy2")})
    assert shards.shards_to_compute(q, grown) == 2
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        extract_features(q, grown, part, shard=i)
    assert not (tmp_path / "deploy2").exists()  # shard tasks leave the adding to the gather
    gathered = extract_features(q, grown, tmp_path / "run3", previous=parts)
    assert gathered.summary["store"]["shards_added"] == 2
    assert shards.shards_to_compute(q, grown) == 0
    decoded.clear()
    again = extract_features(q, grown, tmp_path / "run5")
    assert again.summary["kinds"]["logmel"]["computed"] == 0 and decoded == []
    # off: nothing is read or added
    off = extract_features(with_overrides(p, {"features.store": ""}), first, tmp_path / "run4")
    assert off.summary["kinds"]["logmel"]["computed"] == n_old and off.summary["store"]["location"] is None
