"""Features stage: mel filterbank, batched log-mel vs a per-clip torch.stft, content-addressed cache,
index coverage, eGeMAPS in worker processes and error reporting, on generated audio."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from affectflow import audio
from affectflow.config import LogMelConfig, Params
from affectflow.contracts.feature_store import INDEX_COLUMNS, FeatureSet
from affectflow.contracts.manifest import ManifestError, read_manifest, write_manifest
from affectflow.features.keys import feature_keys
from affectflow.features.logmel import LogMel, hz_to_mel, mel_filterbank, mel_to_hz
from affectflow.stages.features import extract_features
from affectflow.stages.ingest import ingest

SR = 16000


def _manifest(params: Params) -> Path:
    return ingest(params).manifest


def _subset(manifest: Path, n: int, out: Path) -> Path:
    df = read_manifest(manifest)
    write_manifest(df.iloc[::max(1, len(df) // n)].head(n).reset_index(drop=True), out)
    return out


# ----------------------------------------------------------------------------- mel filterbank
def test_mel_scales_hit_their_reference_points() -> None:
    # HTK: 1000 Hz is ~1000 mel by construction; Slaney: 1000 Hz = 15 mel, linear (200/3 Hz/mel) below.
    assert hz_to_mel(1000.0, "htk") == pytest.approx(999.99, abs=0.01)
    assert hz_to_mel(1000.0, "slaney") == pytest.approx(15.0)
    assert hz_to_mel(500.0, "slaney") == pytest.approx(7.5)
    assert hz_to_mel(6400.0, "slaney") == pytest.approx(15.0 + 27.0)  # log step: 27 mel per factor 6.4
    f = np.array([0.0, 20.0, 700.0, 1000.0, 3999.0, 8000.0])
    for scale in ("htk", "slaney"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, rtol=1e-10, atol=1e-9)


def test_mel_filterbank_matches_hand_computed_single_filter() -> None:
    # One HTK filter from 0 to 4000 Hz over bins at 0, 1000, ..., 4000 Hz: corners 0 and 4000 Hz,
    # centre c = the Hz value of half of mel(4000); weights rise as f/c and fall as (4000-f)/(4000-c).
    top = 2595.0 * np.log10(1 + 4000.0 / 700.0)
    c = 700.0 * (10 ** (top / 2 / 2595.0) - 1)
    expected = [0.0, 1000 / c, (4000 - 2000) / (4000 - c), (4000 - 3000) / (4000 - c), 0.0]
    fb = mel_filterbank(5, 8000, 1, 0.0, 4000.0, "htk", "none")
    assert c == pytest.approx(1113.8, abs=0.1)
    np.testing.assert_allclose(fb[:, 0], expected, rtol=1e-12)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filterbank_partition_of_unity_and_slaney_area(scale: str) -> None:
    cfg = LogMelConfig()
    n_freqs = cfg.n_fft // 2 + 1
    fb = mel_filterbank(n_freqs, SR, cfg.n_mels, cfg.f_min, cfg.f_max, scale, "none")
    freqs = np.linspace(0, SR / 2, n_freqs)
    centres = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min, scale), hz_to_mel(cfg.f_max, scale), cfg.n_mels + 2), scale)
    assert fb.shape == (n_freqs, cfg.n_mels)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-12
    inside = (freqs >= centres[1]) & (freqs <= centres[-2])
    np.testing.assert_allclose(fb[inside].sum(axis=1), 1.0, atol=1e-9)  # neighbours cross-fade exactly
    assert not fb[freqs < cfg.f_min].any() and not fb[freqs > cfg.f_max].any()
    # Slaney normalisation: every triangle has unit area in Hz (checked on a 0.5 Hz grid).
    fine = mel_filterbank(16001, SR, cfg.n_mels, cfg.f_min, cfg.f_max, scale, "slaney")
    np.testing.assert_allclose(fine.sum(axis=0) * 0.5, 1.0, rtol=2e-3)


# ----------------------------------------------------------------------------- batched log-mel
def test_batched_logmel_equals_per_clip_stft_with_exact_frames() -> None:
    cfg = LogMelConfig()
    lm = LogMel(cfg, SR)
    rng = np.random.default_rng(0)
    lengths = [16000, 12345, cfg.hop_length * 50, 200, 48000, cfg.n_fft // 2 + 1]
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    batched = lm.batch(clips)
    for x, got in zip(clips, batched, strict=True):
        want = lm.reference(x)
        n = max(x.size, cfg.n_fft // 2 + 1)
        assert got.shape == want.shape == (cfg.n_mels, 1 + n // cfg.hop_length)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    # The zero padding of a batch never reaches a short clip's frames: same result alone or beside 3 s.
    np.testing.assert_allclose(lm.batch([clips[1]])[0], batched[1], atol=1e-5)


def test_logmel_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"features\.logmel\.f_min/f_max"):
        LogMel(LogMelConfig(f_max=9000.0), SR)
    with pytest.raises(ValueError, match=r"features\.logmel\.win_length"):
        LogMel(LogMelConfig(win_length=1024), SR)


# ----------------------------------------------------------------------------- the stage
def test_extract_covers_manifest_reuses_cache_and_rekeys(synth_params: Params, tmp_path: Path) -> None:
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    man = _manifest(params)
    df = read_manifest(man)
    out = tmp_path / "features"

    cold = extract_features(params, man, out)
    n = df["sha256"].nunique()
    assert cold.summary["kinds"]["logmel"] == {"key": feature_keys(params)["logmel"], "computed": n, "cached": 0}
    assert cold.summary["audio_seconds_computed"] == pytest.approx(df.drop_duplicates("sha256")["duration"].sum(),
                                                                   rel=1e-3)
    assert json.loads((out / "summary.json").read_text())["kinds"] == cold.summary["kinds"]
    index = pd.read_parquet(cold.index)
    assert list(index.columns) == INDEX_COLUMNS
    assert sorted(index["utt_id"]) == sorted(df["utt_id"]) and set(index["kind"]) == {"logmel"}
    fs = FeatureSet(out)
    ids = df["utt_id"].tolist()
    arrays = fs.load("logmel", ids)
    for (_, row), arr, shape in zip(df.iterrows(), arrays, index.set_index("utt_id").loc[ids, "shape"], strict=True):
        frames = audio.info(row["path"]).frames  # generated at 16 kHz: no resampling
        assert arr.shape == (64, 1 + frames // 160) == tuple(shape)
    row = df.iloc[3]
    np.testing.assert_allclose(arrays[3], LogMel(params.features.logmel, SR).reference(audio.load(row["path"], SR)),
                               atol=2e-4, rtol=1e-4)

    files = sorted(out.glob("logmel/*/*.np[z]")) + sorted(out.glob("logmel/*/*.json"))
    assert len(files) == 2  # one shard (and its record) for this small manifest
    stamps = {f: f.stat().st_mtime_ns for f in files}
    warm = extract_features(params, man, out)
    assert warm.summary["kinds"]["logmel"]["computed"] == 0
    assert warm.summary["kinds"]["logmel"]["cached"] == n
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # nothing rewritten
    pd.testing.assert_frame_equal(pd.read_parquet(warm.index), index)
    (out / "index.parquet").unlink()  # without the old index, shapes come from the shard records
    pd.testing.assert_frame_equal(pd.read_parquet(extract_features(params, man, out).index), index)

    params.features.logmel.n_mels = 32
    rekeyed = extract_features(params, man, out)
    new_key = rekeyed.summary["kinds"]["logmel"]["key"]
    assert new_key != cold.summary["kinds"]["logmel"]["key"]
    assert rekeyed.summary["kinds"]["logmel"]["computed"] == n
    assert FeatureSet(out).load("logmel", ids[:1])[0].shape[0] == 32
    assert all(f.exists() for f in files)  # the old configuration stays cached beside the new one


def test_resampled_audio_gets_its_own_key_and_frame_count(synth_params: Params, tmp_path: Path) -> None:
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    man = _subset(_manifest(params), 4, tmp_path / "small.parquet")
    key16 = feature_keys(params)["logmel"]
    params.audio.sample_rate = 8000
    params.features.logmel.f_max = 4000.0
    res = extract_features(params, man, tmp_path / "features")
    assert res.summary["kinds"]["logmel"]["key"] != key16
    df = read_manifest(man)
    for path, arr in zip(df["path"], FeatureSet(tmp_path / "features").load("logmel", df["utt_id"].tolist()), strict=True):
        assert arr.shape == (64, 1 + audio.load(path, 8000).size // 160)


def test_egemaps_and_logmel_in_worker_processes(synth_params: Params, tmp_path: Path) -> None:
    params = synth_params.model_copy(deep=True)
    params.features.workers = 2
    params.features.batch_size = 4
    params.features.egemaps.levels = ["functionals", "lld"]
    man = _subset(_manifest(params), 6, tmp_path / "small.parquet")
    ids = read_manifest(man)["utt_id"].tolist()
    res = extract_features(params, man, tmp_path / "features")
    assert res.summary["workers"] == 2
    assert {k: v["computed"] for k, v in res.summary["kinds"].items()} == {"logmel": 6, "egemaps": 6, "egemaps_lld": 6}
    fs = FeatureSet(tmp_path / "features")
    assert fs.kinds == ["egemaps", "egemaps_lld", "logmel"]
    X = fs.matrix("egemaps", ids)
    assert X.shape == (6, 88) and np.isfinite(X).all()
    assert len({tuple(r) for r in X.round(4)}) == 6  # one distinct vector per clip, not a constant
    for lld, mel in zip(fs.load("egemaps_lld", ids), fs.load("logmel", ids), strict=True):
        assert lld.shape[0] == 25 and lld.shape[1] > 50
        assert abs(lld.shape[1] - mel.shape[1]) <= 5  # both at a 10 ms hop over the same clip
    path = read_manifest(man)["path"].iloc[0]
    np.testing.assert_allclose(fs.load("logmel", ids[:1])[0],
                               LogMel(params.features.logmel, SR).reference(audio.load(path, SR)), atol=2e-4, rtol=1e-4)


def test_logmel_batched_in_main_process_matches_worker_mode(synth_params: Params, tmp_path: Path) -> None:
    # The CUDA layout (workers decode, the main process batches) run on CPU, against worker-side log-mel.
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    params.features.workers = 2
    params.features.batch_size = 3
    man = _subset(_manifest(params), 10, tmp_path / "small.parquet")
    ids = read_manifest(man)["utt_id"].tolist()
    by = {}
    threads = torch.get_num_threads()
    for where in ("main", "workers"):
        params.features.logmel_in = where
        res = extract_features(params, man, tmp_path / where)
        assert res.summary["logmel_in"] == where and res.summary["kinds"]["logmel"]["computed"] == 10
        assert torch.get_num_threads() == threads  # the stage gives the caller its thread setting back
        by[where] = FeatureSet(tmp_path / where).load("logmel", ids)
    for a, b in zip(by["main"], by["workers"], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_duplicate_content_shares_one_file(synth_params: Params, tmp_path: Path) -> None:
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    df = read_manifest(_subset(_manifest(params), 3, tmp_path / "small.parquet"))
    dup = df.iloc[[0]].assign(utt_id="ravdess/copy-of-first")
    write_manifest(pd.concat([df, dup], ignore_index=True), tmp_path / "dup.parquet")
    res = extract_features(params, tmp_path / "dup.parquet", tmp_path / "features")
    assert res.summary["clips"] == 4 and res.summary["unique_audio"] == 3
    assert res.summary["kinds"]["logmel"]["computed"] == 3
    files = pd.read_parquet(res.index).set_index("utt_id")["file"]
    assert files["ravdess/copy-of-first"] == files[df["utt_id"].iloc[0]]


def test_bad_audio_raises_audio_error_naming_the_file(synth_params: Params, tmp_path: Path) -> None:
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    df = read_manifest(_subset(_manifest(params), 2, tmp_path / "small.parquet"))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF but not really audio" * 40)
    df.loc[1, "path"] = str(bad)
    df.loc[1, "sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    write_manifest(df, tmp_path / "bad.parquet")
    with pytest.raises(audio.AudioError, match=r"broken\.wav"):
        extract_features(params, tmp_path / "bad.parquet", tmp_path / "features")
    assert not (tmp_path / "features" / "index.parquet").exists()
    assert not list((tmp_path / "features").rglob("*.npz"))  # the shard holding it was never written


def test_manifest_without_content_hash_is_rejected(synth_params: Params, tmp_path: Path) -> None:
    df = read_manifest(_subset(_manifest(synth_params), 2, tmp_path / "small.parquet"))
    df.loc[1, "sha256"] = "not-a-hash"
    write_manifest(df, tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match=r"row 1 .*sha256"):
        extract_features(synth_params, tmp_path / "bad.parquet", tmp_path / "features")


def test_compare_functionals_are_a_kind_of_their_own(synth_params, tmp_path: Path) -> None:
    """ComParE 2016 functionals (6373) beside eGeMAPS in one store, each under its own key, and the
    model folder's feature_config recomputes them from audio (as the pyfunc does)."""
    from affectflow.config import with_overrides
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.features.keys import feature_keys, kind_config
    from affectflow.stages.ingest import ingest

    p = with_overrides(synth_params, {"features.kinds": ["egemaps", "compare"]})
    manifest = ingest(p, tmp_path / "ingest").manifest
    df = pd.read_parquet(manifest).head(2)
    df.to_parquet(tmp_path / "two.parquet", index=False)
    extract_features(p, tmp_path / "two.parquet", tmp_path / "features")
    fs = FeatureSet(tmp_path / "features")
    X = fs.matrix("compare", df["utt_id"].tolist())
    assert X.shape == (2, 6373) and np.isfinite(X).all()
    assert fs.matrix("egemaps", df["utt_id"].tolist()).shape == (2, 88)
    keys = feature_keys(p)
    assert keys["compare"] != keys["egemaps"]
    assert kind_config(p, "compare") == {"feature_set": "ComParE_2016", "levels": ["functionals"]}


def test_reused_opensmile_graph_gives_process_signals_values() -> None:
    """One openSMILE graph per kind, reset between clips, gives exactly what a fresh
    `Smile.process_signal` per clip gives: across clips of different lengths (no state carried
    from one clip to the next), a clip too short for any frame (NaN, as openSMILE's wrapper), a
    clip after it, and a second thread (its own graphs)."""
    import threading

    from affectflow.config import EgemapsConfig
    from affectflow.features.egemaps import Egemaps

    rng = np.random.default_rng(7)
    t = np.arange(SR * 2) / SR
    clips = [(0.3 * np.sin(2 * np.pi * 180 * t[: SR * 2]) + 0.02 * rng.standard_normal(SR * 2)).astype(np.float32),
             (0.1 * rng.standard_normal(SR // 2)).astype(np.float32),
             np.zeros(40, np.float32),
             (0.5 * np.sin(2 * np.pi * 300 * t[: SR]) * np.linspace(0, 1, SR)).astype(np.float32)]
    ex = Egemaps(EgemapsConfig(levels=["functionals", "lld"]), ["compare", "egemaps", "egemaps_lld"])
    fresh = {kind: [ex.smiles[kind].process_signal(x, SR).to_numpy(dtype=np.float32) for x in clips]
             for kind in ex.smiles}
    with pytest.warns(UserWarning, match="too short"):  # openSMILE's wrapper on the 40-sample clip
        ex.smiles["egemaps"].process_signal(clips[2], SR)

    def check(out: dict[str, list[dict[str, np.ndarray]]]) -> None:
        for kind, ref in fresh.items():
            for i, (want, got) in enumerate(zip(ref, (o[kind] for o in out[kind]), strict=True)):
                want = np.ascontiguousarray(want.T) if kind == "egemaps_lld" else want[0]
                assert got.shape == want.shape and got.dtype == np.float32, (kind, i)
                np.testing.assert_array_equal(got, want, err_msg=f"{kind} clip {i}")

    runs = {kind: [ex(x, SR, [kind]) for x in clips + clips] for kind in ex.smiles}
    check({k: v[: len(clips)] for k, v in runs.items()})
    check({k: v[len(clips):] for k, v in runs.items()})  # the same graphs, a second round
    assert np.isnan(runs["compare"][2]["compare"]).all() and np.isfinite(runs["compare"][3]["compare"]).all()
    other: dict[str, list[dict[str, np.ndarray]]] = {}
    th = threading.Thread(target=lambda: other.update({k: [ex(x, SR, [k]) for x in clips] for k in ex.smiles}))
    th.start()
    th.join()
    check(other)
    assert len(ex._local.graphs) == 3  # this thread's graphs: one per kind, reused
    # the wrapper's list of sink callbacks (each holding its clip's rows) does not grow with the clips
    assert [len(g.api._callbacks) for g in ex._local.graphs.values()] == [1, 1, 1]
