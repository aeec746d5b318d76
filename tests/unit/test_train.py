"""Training: the tiny end-to-end run, resume after interruption, synthetic data, pretrained
encoders, k-fold, and the errors that protect honest numbers."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recognizer_support import corpus, tiny_params, trained

from affectflow.config import TrainConfig
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import load_weights as load_state
from affectflow.contracts.model_folder import read_model_meta as read_meta
from affectflow.contracts.model_folder import write_model_folder as save_model_dir
from affectflow.serving.recognizer import load_model_dir
from affectflow.stages.train.loop import (
    TrainingInterrupted,
    batch_slices,
    epoch_order,
    epoch_rng,
    epoch_size,
    fade_end,
    weighted_loss,
)
from affectflow.stages.train.loop import class_weights as _class_weights
from affectflow.stages.train.plan import TrainingError, plan, select_synthetic
from affectflow.stages.train.stage import train
from affectflow.studies.kfold import train_folds

NO_PYFUNC = {"tracking.log_model": False}  # the pyfunc is tested once, in test_serving


def test_end_to_end_writes_a_complete_model_folder(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    tr = t["result"]
    meta = read_meta(tr.model_dir)
    assert meta.arch == "cnn_bigru" and meta.feature == "logmel"
    assert meta.classes == ["neutral", "happy", "sad", "angry"]
    assert meta.feature_config["n_mels"] == t["params"].features.logmel.n_mels
    assert meta.audio["sample_rate"] == t["params"].audio.sample_rate
    assert meta.normalization["mode"] == "global" and len(meta.normalization["mean"]) == meta.input_dim
    for key in ("manifest_hash", "feature_config_hash", "params_hash", "git_commit"):
        assert key in meta.lineage
    assert meta.mlflow["run_id"] == tr.summary["mlflow_run_id"]
    # Checkpoint selection used validation speakers only, and they are disjoint from training ones.
    assert not set(meta.train.val_speakers) & set(meta.train.train_speakers)
    m = read_manifest(t["manifest"])
    test_speakers = set(m.loc[m["split"] == "test", "speaker"])
    assert not test_speakers & (set(meta.train.train_speakers) | set(meta.train.val_speakers))
    assert tr.summary["epochs_run"] == t["params"].train.epochs
    assert 0 <= tr.summary["best_epoch"] < tr.summary["epochs_run"]
    assert (tr.model_dir.parent / "curves.png").stat().st_size > 0
    assert json.loads((tr.model_dir.parent / "summary.json").read_text())["val_uar"] == tr.summary["val_uar"]
    rec = load_model_dir(tr.model_dir)
    assert not rec.model.training


def test_learns_the_generated_emotions(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """3 tiny epochs on 80 generated clips already beat chance (0.25) on unseen speakers."""
    metrics = trained(synth_root, tmp_path_factory)["metrics"]
    assert metrics["test"]["uar"] > 0.4


def test_interrupted_run_resumes_to_the_same_model(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    """A retried pod: the first attempt stops after one epoch; the retry writes another output folder
    (a new Model artifact) but finds the checkpoints at the same location, keyed by the run name."""
    t = trained(synth_root, tmp_path_factory)
    params, manifest, features = t["params"], t["manifest"], t["features"]
    ckpt = {"train.checkpoint_dir": str(tmp_path / "ckpt"), **NO_PYFUNC}
    first = tmp_path / "attempt-1"
    with pytest.raises(TrainingInterrupted, match="stop_after_epochs"):
        train(tiny_params(params, **{"train.stop_after_epochs": 1, **ckpt}), manifest, features, first)
    ckpts = list((tmp_path / "ckpt").glob("*/epoch_*"))
    assert [p.name for p in ckpts] == ["epoch_0000"]
    assert not (first / "model").exists()
    retry = tmp_path / "attempt-2"
    resumed = train(tiny_params(params, **ckpt), manifest, features, retry)
    # Same seed, same data: the resumed run ends exactly where the uninterrupted one did.
    a, b = load_state(t["result"].model_dir), load_state(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["val_uar"] == t["result"].summary["val_uar"]
    assert resumed.summary["epochs_run"] == params.train.epochs
    assert resumed.summary["checkpoints"] == str(ckpts[0].parent)
    # ...and it is one MLflow run, carried on under the interrupted run's id.
    run_file = next((tmp_path / "ckpt").glob("*/mlflow_run_id"))
    assert run_file.read_text() == resumed.summary["mlflow_run_id"]
    # The outputs hold the model folder, no optimiser state.
    for out in (first, retry):
        assert not list(out.rglob("state.pt")) and not (out / "checkpoints").exists()


def _synthetic_set(manifest: Path, features: Path, out: Path, n: int = 40) -> Path:
    """A stand-in augment output: noisy copies of real eGeMAPS rows, every 4th not kept."""
    from affectflow.contracts.feature_store import FeatureSet

    fs = FeatureSet(features)
    ids = read_manifest(manifest).query("split == 'train'")["utt_id"].tolist()[:20]
    x = fs.matrix("egemaps", ids)
    rng = np.random.default_rng(0)
    np.savez(out / "synthetic.npz", X=(x[rng.integers(0, len(x), n)] + rng.normal(0, 0.1, (n, x.shape[1]))).astype(np.float32),
             y=rng.integers(0, 4, n), classes=np.array(["angry", "happy", "neutral", "sad"]),
             feature=np.array("egemaps"), kept=np.arange(n) % 4 != 0)
    return out


def test_egemaps_mlp_with_synthetic_data(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    _synthetic_set(manifest, features, tmp_path)
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 2, "train.synthetic_ratio": 0.25, **NO_PYFUNC})
    tr = train(p, manifest, features, tmp_path / "train", synthetic=tmp_path)
    assert tr.summary["n_synthetic"] == round(0.25 * tr.summary["n_train"])
    meta = read_meta(tr.model_dir)
    assert meta.feature == "egemaps" and meta.input_dim == 88 and meta.lineage["synthetic"]


def test_synthetic_selection_keeps_only_kept_rows_and_fills_small_classes_first(tmp_path: Path):
    from affectflow.config import TrainConfig

    n = 60
    y = np.repeat([0, 1, 2], 20)
    kept = np.ones(n, bool)
    kept[:5] = False
    np.savez(tmp_path / "synthetic.npz", X=np.zeros((n, 3), np.float32), y=y,
             classes=np.array(["a", "b", "c"]), feature=np.array("egemaps"), kept=kept)
    train_y = np.array([0] * 30 + [1] * 10 + [2] * 20)
    sel = select_synthetic(tmp_path, "egemaps", ["a", "b", "c"], train_y,
                           TrainConfig(synthetic_ratio=0.5, balance_minority=True))
    assert len(sel.rows) == 30 and not set(sel.rows) & set(range(5))
    counts = np.bincount(train_y, minlength=3) + np.bincount(sel.y, minlength=3)
    assert counts.tolist() == [30, 30, 30]  # the 30 synthetic samples levelled the classes
    plain = select_synthetic(tmp_path, "egemaps", ["a", "b", "c"], train_y, TrainConfig(synthetic_ratio=0.5))
    assert len(plain.rows) == 30 and not set(plain.rows) & set(range(5))
    with pytest.raises(TrainingError, match="field 'feature'"):
        select_synthetic(tmp_path, "logmel", ["a", "b", "c"], train_y, TrainConfig(synthetic_ratio=0.5))


def test_pretrained_encoder_is_loaded_before_fine_tuning(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 1, "train.lr": 1e-9,
                               "train.schedule": "constant", **NO_PYFUNC})
    first = train(p, manifest, features, tmp_path / "a")
    # A "pretrained" folder whose encoder weights are recognisable.
    rec = load_model_dir(first.model_dir)
    with torch.no_grad():
        for prm in rec.model.encoder.parameters():
            prm.fill_(0.0123)
    save_model_dir(tmp_path / "pre", rec.model, rec.meta)
    tuned = load_state(train(p, manifest, features, tmp_path / "b", pretrained=tmp_path / "pre").model_dir)
    w = tuned["encoder.net.0.weight"]
    assert torch.allclose(w, torch.full_like(w, 0.0123), atol=1e-6)
    meta = rec.meta.model_copy(update={"arch_config": {"hidden": [7], "dropout": 0.1}})
    save_model_dir(tmp_path / "wrong", rec.model, meta)
    with pytest.raises(TrainingError, match="field 'arch_config'"):
        train(p, manifest, features, tmp_path / "c", pretrained=tmp_path / "wrong")


@pytest.mark.parametrize("mode", ["full", "freeze_bn", "freeze_encoder"])
def test_finetune_mode_decides_what_of_the_pretrained_encoder_moves(
        mode: str, synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    """DANN's gain lives largely in the encoder's BatchNorm statistics (they saw the target):
    freeze_bn keeps them (and only them) while the rest trains; full re-estimates them."""
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 2, "train.lr": 1e-2,
                               "train.finetune": mode, **NO_PYFUNC})
    rec = load_model_dir(train(tiny_params(p, **{"train.epochs": 1}), manifest, features, tmp_path / "a").model_dir)
    bns = {n: m for n, m in rec.model.encoder.named_modules() if isinstance(m, torch.nn.BatchNorm1d)}
    assert bns
    with torch.no_grad():
        for m in bns.values():  # statistics no source batch would produce
            m.running_mean.fill_(0.5)
            m.running_var.fill_(2.0)
    save_model_dir(tmp_path / "pre", rec.model, rec.meta)
    pre = load_state(tmp_path / "pre")
    tuned = load_state(train(p, manifest, features, tmp_path / "tuned", pretrained=tmp_path / "pre").model_dir)
    bn_keys = [k for k in pre if any(k.startswith(f"encoder.{n}.") for n in bns) and "num_batches" not in k]
    linear = "encoder.net.0.weight"
    bn_same = all(torch.allclose(pre[k].float(), tuned[k].float()) for k in bn_keys)
    assert bn_same == (mode != "full")
    assert torch.allclose(pre[linear], tuned[linear]) == (mode == "freeze_encoder")
    assert not torch.allclose(pre["head.weight"], tuned["head.weight"])


def test_no_validation_speakers_is_an_error(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    df = read_manifest(manifest)
    df["split"] = df["split"].replace({"val": "train"})
    write_manifest(df, tmp_path / "m.parquet")
    with pytest.raises(TrainingError, match="no validation rows"):
        train(tiny_params(params), tmp_path / "m.parquet", features, tmp_path / "out")


def test_k_fold_reports_mean_and_spread(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    from affectflow.contracts.splits import apply_splits

    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 1, "splits.n_folds": 2,
                               "evaluate.bootstrap": 0})
    df = apply_splits(read_manifest(manifest), p.splits)
    write_manifest(df, tmp_path / "m.parquet")
    s = train_folds(p, tmp_path / "m.parquet", features, tmp_path / "kfold")
    assert s["n_folds"] == 2 and len(s["folds"]) == 2
    uars = [f["uar"] for f in s["folds"]]
    assert s["mean"]["uar"] == pytest.approx(np.mean(uars), abs=1e-4)
    assert s["std"]["uar"] == pytest.approx(np.std(uars, ddof=1), abs=1e-4)
    # every speaker is tested exactly once across the folds
    tested = [spk for f in s["folds"] for spk in f["test_speakers"]]
    assert sorted(tested) == sorted(df["speaker"].unique())
    assert s["pooled"]["n"] == len(df)
    assert "mean ± std" in (tmp_path / "kfold" / "report.md").read_text()
    assert pd.read_parquet(tmp_path / "kfold" / "fold_1" / "evaluate" / "predictions.parquet").shape[0] > 0
    # MLflow: one parent run with the mean, one nested run per fold
    import mlflow

    from affectflow.tracking.uri import resolve_uri

    mlflow.set_tracking_uri(resolve_uri(p.tracking.uri))
    parent = mlflow.search_runs(experiment_names=[p.tracking.experiment], filter_string="tags.stage = 'train_folds'")
    assert parent["metrics.mean_uar"].iloc[0] == pytest.approx(s["mean"]["uar"])
    children = mlflow.search_runs(experiment_names=[p.tracking.experiment],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent['run_id'].iloc[0]}'")
    assert sorted(children["tags.fold"]) == ["0", "1"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("AFFECTFLOW_RAY_TESTS") != "1",
                    reason="starts a local Ray cluster (~1-2 min); set AFFECTFLOW_RAY_TESTS=1 to run")
def test_ray_workers_resume_from_rays_checkpoint_storage(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                         tmp_path: Path):
    """num_workers=1: the loop runs in a Ray worker, Ray persists the checkpoints; interrupted and
    started again, it resumes from them and ends with the in-process run's weights."""
    t = trained(synth_root, tmp_path_factory)
    params, manifest, features = t["params"], t["manifest"], t["features"]
    ray_params = {"train.num_workers": 1, "train.checkpoint_dir": str(tmp_path / "ckpt"), **NO_PYFUNC}
    with pytest.raises(TrainingInterrupted):
        train(tiny_params(params, **ray_params, **{"train.stop_after_epochs": 1}), manifest, features, tmp_path)
    assert list((tmp_path / "ckpt").glob("*/checkpoint_manager_snapshot.json"))
    resumed = train(tiny_params(params, **ray_params), manifest, features, tmp_path)
    a, b = load_state(t["result"].model_dir), load_state(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["world_size"] == 1


def test_features_made_with_other_settings_are_refused(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path):
    """model.json and the pyfunc use params.features: features from another configuration would
    make the served model see different inputs than in training."""
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"features.logmel.n_mels": 40})
    with pytest.raises(TrainingError, match="configuration key"):
        train(p, manifest, features, tmp_path / "out")


# ----------------------------------------------------------------------------- refocus on the real data
def _real_and_synthetic(n_real: int = 30, n_syn: int = 20) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.arange(n_real) % 3, np.arange(n_syn) % 3])
    return y, np.arange(n_real + n_syn) >= n_real


@pytest.mark.parametrize("balance", ["weighted_loss", "sampler"])
def test_fade_uses_all_synthetic_rows_first_then_fewer_then_none(balance: str):
    tc = TrainConfig(epochs=10, synthetic_schedule="fade", synthetic_fade_fraction=0.5, class_balance=balance)
    y, syn = _real_and_synthetic()
    orders = [epoch_order(tc, y, e, 3, syn) for e in range(tc.epochs)]
    used = [int(syn[o].sum()) for o in orders]
    assert fade_end(tc) == 5
    assert [len(o) for o in orders] == [epoch_size(tc, 30, 20, e) for e in range(tc.epochs)]
    assert used[0] > 0 and used[5:] == [0] * 5  # after the fade: real rows only
    if balance == "weighted_loss":  # a permutation: every real row once, the drawn synthetic rows once
        assert sorted(orders[0].tolist()) == list(range(len(y)))
        assert used == [len(set(o[syn[o]].tolist())) for o in orders] == [20, 16, 12, 8, 4, 0, 0, 0, 0, 0]
        assert all(np.array_equal(np.sort(o[~syn[o]]), np.flatnonzero(~syn)) for o in orders)
    # Deterministic per (seed, epoch), so a resumed epoch (and every Ray worker) draws the same rows;
    # another epoch draws other ones.
    assert np.array_equal(epoch_order(tc, y, 2, 3, syn), orders[2])
    assert set(orders[1][syn[orders[1]]]) != set(orders[2][syn[orders[2]]])


def test_constant_schedule_keeps_the_originalepoch_order():
    """Without a fade the order is the plain permutation of (seed, epoch), as before synthetic masks."""
    tc = TrainConfig(epochs=4, class_balance="weighted_loss", corpus_balance=False)
    y, syn = _real_and_synthetic()
    for e in range(tc.epochs):
        legacy = epoch_rng(tc.seed, e, 0)[0].permutation(len(y))
        assert np.array_equal(epoch_order(tc, y, e, 3, syn), legacy)
        assert np.array_equal(epoch_order(tc, y, e, 3), legacy)
    assert fade_end(tc) == 0 and epoch_size(tc, 30, 20, 3) == 50
    assert fade_end(TrainConfig(epochs=1, synthetic_schedule="fade", synthetic_fade_fraction=0.1)) == 1


@pytest.mark.parametrize(("n", "sizes"), [(64, [32, 32]), (65, [32, 33]), (66, [32, 32, 2]), (1, [1]), (0, [])])
def test_a_trailing_batch_of_one_joins_the_batch_before(n: int, sizes: list[int]):
    batches = batch_slices(n, 32)
    assert [b.stop - b.start for b in batches] == sizes
    assert sum(sizes) == n and all(a.stop == b.start for a, b in itertools.pairwise(batches))


def test_synthetic_weight_scales_the_loss_contribution_of_synthetic_rows():
    torch.manual_seed(0)
    logits, y = torch.randn(12, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
    syn = torch.arange(12) >= 8
    for smoothing in (0.0, 0.1):
        fn = nn_loss(torch.tensor([0.5, 1.0, 2.0]), smoothing)
        real_only = fn(logits[~syn], y[~syn])

        def sw(w: float) -> torch.Tensor:
            return torch.where(syn, w, 1.0)

        assert torch.equal(weighted_loss(fn, logits, y, None), fn(logits, y))  # the real-only path is untouched
        assert torch.allclose(weighted_loss(fn, logits, y, sw(1.0)), fn(logits, y), atol=1e-6)
        assert torch.allclose(weighted_loss(fn, logits, y, sw(1e-6)), real_only, atol=1e-5)
        assert not torch.allclose(weighted_loss(fn, logits, y, sw(0.5)), real_only, atol=1e-3)
        # weight 0.5 on a row is the same as half as many copies: two copies at 0.5 = one at 1
        dup = torch.cat([logits, logits[syn]]), torch.cat([y, y[syn]])
        half = torch.cat([sw(0.5), torch.full((int(syn.sum()),), 0.5)])
        assert torch.allclose(weighted_loss(fn, dup[0], dup[1], half), fn(logits, y), atol=1e-6)


def nn_loss(weight: torch.Tensor, smoothing: float) -> torch.nn.CrossEntropyLoss:
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)


def test_class_weights_count_synthetic_rows_by_their_loss_weight():
    tc = TrainConfig(class_balance="weighted_loss")
    y, syn = _real_and_synthetic(30, 12)
    y[30:] = 0  # every synthetic row is class 0
    sw = np.where(syn, 0.25, 1.0)
    w = _class_weights(tc, y, 3, sw).numpy()
    per_class = [float((sw[y == c] * w[c]).sum()) for c in range(3)]
    assert per_class == pytest.approx([per_class[0]] * 3)  # every class weighs the same in the loss
    assert np.allclose(_class_weights(tc, y, 3, np.ones(len(y))).numpy(), _class_weights(tc, y, 3).numpy())


def test_synthetic_settings_are_validated():
    from pydantic import ValidationError

    for bad in ({"synthetic_weight": 0.0}, {"synthetic_weight": 1.5}, {"synthetic_schedule": "linear"},
                {"synthetic_fade_fraction": 0.0}, {"synthetic_fade_fraction": 1.2}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            TrainConfig(**bad)
    assert TrainConfig(synthetic_weight=1.0, synthetic_fade_fraction=1.0).synthetic_schedule == "constant"


def test_fade_trains_to_real_only_epochs_and_resumes_the_same(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                             tmp_path: Path):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    _synthetic_set(manifest, features, tmp_path)
    n_real = int((read_manifest(manifest)["split"] == "train").sum())
    # batch n_real - 1: the real-only epochs end on a batch of one (BatchNorm1d in the MLP)
    knobs = {"train.model": "egemaps_mlp", "train.epochs": 4, "train.patience": 1, "train.synthetic_ratio": 0.5,
             "train.synthetic_schedule": "fade", "train.synthetic_weight": 0.5, "train.batch_size": n_real - 1,
             **NO_PYFUNC}
    p = tiny_params(params, **knobs, **{"train.checkpoint_dir": str(tmp_path / "ckpt-a")})
    tr = train(p, manifest, features, tmp_path / "a", synthetic=tmp_path)
    n_syn = tr.summary["n_synthetic"]
    last = sorted((tmp_path / "ckpt-a").glob("*/epoch_*"))[-1]
    rows = [h["synthetic_rows"] for h in torch.load(last / "state.pt", weights_only=True)["state"]["history"]]
    # fade end = round(0.5 * 4) = 2; patience 1 cannot stop the run before it trained on real rows only
    assert rows[:3] == [n_syn, round(0.5 * n_syn), 0] and n_syn > 0
    assert tr.summary["epochs_run"] >= 3
    ckpt_b = {"train.checkpoint_dir": str(tmp_path / "ckpt-b")}
    with pytest.raises(TrainingInterrupted):
        train(tiny_params(params, **knobs, **ckpt_b, **{"train.stop_after_epochs": 1}), manifest, features,
              tmp_path / "b", synthetic=tmp_path)
    resumed = train(tiny_params(params, **knobs, **ckpt_b), manifest, features, tmp_path / "b", synthetic=tmp_path)
    a, b = load_state(tr.model_dir), load_state(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_synthetic_settings_name_the_run_only_when_they_matter(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                               tmp_path: Path):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    _synthetic_set(manifest, features, tmp_path)
    base = {"train.model": "egemaps_mlp"}

    def name(synthetic: Path | None, **kw: object) -> str:
        return plan(tiny_params(params, **base, **kw), manifest, features, tmp_path / "out", synthetic=synthetic).run_name

    real = name(None)
    assert name(None, **{"train.synthetic_weight": 0.5, "train.synthetic_schedule": "fade"}) == real
    ratio = {"train.synthetic_ratio": 0.5}
    with_syn = name(tmp_path, **ratio)
    assert with_syn != real
    assert name(tmp_path, **ratio, **{"train.synthetic_weight": 0.5}) != with_syn
    assert name(tmp_path, **ratio, **{"train.synthetic_schedule": "fade"}) != with_syn


def test_corpus_normalisation_trains_per_corpus_and_deploys_on_running_statistics(tmp_path: Path, synth_root: Path,
                                                                                   tmp_path_factory):
    """train.normalize=corpus: each training corpus standardised by its own statistics; audio of
    another corpus by the deployment's running statistics of the clips before it (label-free), the
    pooled statistics below deploy_min_clips; the whole set only offline (`whole_set`)."""
    from recognizer_support import corpus, tiny_params

    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.models.data import compute_stats
    from affectflow.serving.recognizer import predict_features

    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.normalize": "corpus", "train.epochs": 2,
                               "train.deploy_min_clips": 5, "train.deploy_window": 50})
    tr = train(p, manifest, features, tmp_path / "t")
    meta = read_meta(tr.model_dir)
    df = read_manifest(manifest)
    fs = FeatureSet(features)
    rows = df[(df["split"] == "train") & (df["corpus"] == "ravdess")]
    want = compute_stats(fs.load("egemaps", rows["utt_id"].tolist()), "global")
    assert np.allclose(meta.normalization_per_corpus["ravdess"]["mean"], want.mean, rtol=1e-5)
    rule = meta.deploy_normalization
    assert (rule.mode, rule.min_clips, rule.window) == ("running", 5, 50)
    test = fs.load("egemaps", df.loc[df["split"] == "test", "utt_id"].tolist())
    shifted = [a * 1.5 + 3.0 for a in test]  # a new recording condition: gain and offset on every feature
    # offline, standardised by their own statistics, the shifted clips are scored like the unshifted ones
    rec = load_model_dir(tr.model_dir)
    assert np.allclose(predict_features(rec, shifted, whole_set=True), predict_features(rec, test, whole_set=True),
                       atol=1e-4)
    # deployed: the first clips get the pooled statistics, later ones the running statistics, which
    # remove the shift as well (the same clips, shifted or not, score alike once past min_clips)
    streamed, plain = predict_features(load_model_dir(tr.model_dir), shifted), predict_features(rec, test)
    assert np.allclose(streamed[6:], plain[6:], atol=1e-3)
    assert not np.allclose(streamed[:5], plain[:5], atol=1e-3)
    # a clip of a training corpus uses that corpus's statistics whatever else is in the call
    one = predict_features(rec, test[:1], corpora=["ravdess"])
    assert np.allclose(one, predict_features(rec, test[:2], corpora=["ravdess", "ravdess"])[:1], atol=1e-6)


def test_corpus_balance_draws_every_corpus_equally():
    tc = TrainConfig(corpus_balance=True, class_balance="weighted_loss", seed=3)
    group = np.array([0] * 900 + [1] * 100)
    y = np.zeros(1000, np.int64)
    counts = np.zeros(2)
    for e in range(5):
        order = epoch_order(tc, y, e, 1, None, group)
        assert len(order) == 1000
        counts += np.bincount(group[order], minlength=2)
    assert abs(counts[0] / counts.sum() - 0.5) < 0.03  # 90 / 10 in the data, 50 / 50 drawn
    plain = epoch_order(TrainConfig(seed=3, class_balance="weighted_loss", corpus_balance=False), y, 0, 1, None, group)
    assert sorted(plain.tolist()) == list(range(1000))  # without it: a permutation, as before
    syn = np.array([False] * 1000 + [True] * 200)
    g2 = np.concatenate([group, -np.ones(200, np.int64)])
    order = epoch_order(tc, np.zeros(1200, np.int64), 0, 1, syn, g2)
    assert abs(syn[order].mean() - 200 / 1200) < 0.04  # synthetic rows keep their share


def test_checkpoint_last_keeps_the_final_epoch_and_needs_no_validation_speakers(tmp_path: Path, synth_root: Path,
                                                                                 tmp_path_factory):
    from recognizer_support import corpus, tiny_params

    params, manifest, features = corpus(synth_root, tmp_path_factory)
    df = read_manifest(manifest)
    df.loc[df["split"] == "val", "split"] = "train"  # no validation speakers at all
    write_manifest(df, tmp_path / "noval.parquet")
    p = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 3, "train.checkpoint": "last",
                               "train.patience": 1})
    tr = train(p, tmp_path / "noval.parquet", features, tmp_path / "t")
    assert tr.summary["best_epoch"] == 2 and tr.summary["epochs_run"] == 3 and not tr.summary["stopped_early"]
    with pytest.raises(TrainingError, match="no validation rows"):
        train(tiny_params(params, **{"train.model": "egemaps_mlp"}), tmp_path / "noval.parquet", features,
              tmp_path / "u")


def test_corpus_balance_with_the_sampler_draws_every_corpus_class_cell_equally():
    tc = TrainConfig(corpus_balance=True, class_balance="sampler", seed=1)
    group = np.array([0] * 800 + [1] * 200)
    y = np.array(([0] * 700 + [1] * 100) + ([0] * 50 + [1] * 150))
    counts = np.zeros((2, 2))
    for e in range(8):
        order = epoch_order(tc, y, e, 2, None, group)
        np.add.at(counts, (group[order], y[order]), 1)
    share = counts / counts.sum()
    assert np.allclose(share, 0.25, atol=0.02)


# --------------------------------------------------------------------------- Ray on a GPU pod: bounded, checked
def test_ray_controller_failures_are_bounded() -> None:
    from affectflow.config import load_params
    from affectflow.stages.train.driver import failure_config

    fc = failure_config(load_params(None, {"train.max_failures": 2}).train)
    assert fc.max_failures == 2
    assert fc.controller_failure_limit == load_params(None).train.controller_failure_limit >= 0  # not Ray's -1


def test_more_gpu_workers_than_visible_gpus_is_refused_before_ray_starts(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    import ray

    from affectflow.config import load_params
    from affectflow.runtime import device
    from affectflow.stages.train import driver
    from affectflow.stages.train.plan import TrainingError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(device, "visible_gpus", lambda: 1)
    monkeypatch.setattr(device, "cuda_available", lambda: True)

    def no_ray(*a: object, **k: object) -> None:
        raise AssertionError("ray.init must not run")

    monkeypatch.setattr(ray, "init", no_ray)
    tc = load_params(None, {"train.num_workers": 2, "train.device": "cuda"}).train
    with pytest.raises(TrainingError, match=r"train\.num_workers: 2 GPU workers but this pod sees 1 GPU"):
        driver.fit(tc, object(), "run")  # type: ignore[arg-type]
    driver.check_gpus_for_workers(load_params(None, {"train.num_workers": 1}).train, gpu=True)
    driver.check_gpus_for_workers(tc, gpu=False)  # CPU workers: no GPU needed


def test_training_on_a_ray_cluster_is_submitted_as_a_ray_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """RAY_ADDRESS=http://<head>:8265: the task submits `python -m affectflow.stages.train.ray_job <spec>`
    through the Jobs API (not Ray Client), forwards its MLflow / S3 settings, streams the job's log and
    returns the outcome the job wrote; a failed job is an error with its last log lines."""
    import dataclasses
    import shlex

    from affectflow.config import load_params
    from affectflow.stages.train import driver, ray_job
    from affectflow.stages.train.plan import TrainingError

    tc = load_params(None, {"train.num_workers": 2}).train
    cfg = dataclasses.replace(_worker_config_stub(tmp_path), storage=str(tmp_path / "ray"), inputs="packed")
    ran: list[tuple] = []

    def fake_fit(tc_: object, cfg_: object, run_name: str) -> dict:
        ran.append((tc_, cfg_, run_name))
        return {"best_state": {"w": [1.0]}, "history": [], "best_epoch": 1}

    class FakeJobs:
        fail = False

        def __init__(self, address: str) -> None:
            self.address, self.status = address, "PENDING"

        def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict) -> str:
            self.entrypoint, self.env = entrypoint, runtime_env["env_vars"]
            module, spec = shlex.split(entrypoint)[2:4]
            assert module == ray_job.ENTRYPOINT_MODULE
            if not FakeJobs.fail:
                ray_job.run_spec(spec)  # what the job's driver does on the cluster
            self.status = "FAILED" if FakeJobs.fail else "SUCCEEDED"
            return submission_id

        def get_job_status(self, job_id: str) -> str:
            return self.status

        def get_job_logs(self, job_id: str) -> str:
            return "epoch 1 val_uar 0.5\n"

        def get_job_info(self, job_id: str) -> object:
            return type("Info", (), {"message": "worker group could not be scheduled"})()

    monkeypatch.setattr(driver, "fit", fake_fit)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    clients: list[FakeJobs] = []
    outcome = ray_job.submit(tc, cfg, "run-1", "http://head:8265",
                             client_factory=lambda a: clients.append(FakeJobs(a)) or clients[-1], poll_s=0)
    assert outcome["best_epoch"] == 1 and ran[0][2] == "run-1" and ran[0][1] == cfg
    assert clients[0].address == "http://head:8265"
    assert clients[0].env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert ray_job.uses_jobs_api("http://head:8265") and not ray_job.uses_jobs_api("ray://head:10001")
    FakeJobs.fail = True
    with pytest.raises(TrainingError, match=r"(?s)FAILED \(worker group could not be scheduled\).*epoch 1"):
        ray_job.submit(tc, cfg, "run-2", "http://head:8265", client_factory=FakeJobs, poll_s=0)


def _worker_config_stub(tmp_path: Path):
    """A WorkerConfig with every field filled by a placeholder (the job only carries it)."""
    import dataclasses
    import typing

    from affectflow.stages.train.plan import WorkerConfig

    values = {}
    hints = typing.get_type_hints(WorkerConfig)
    for f in dataclasses.fields(WorkerConfig):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            continue
        t = hints[f.name]
        values[f.name] = str(tmp_path / f.name) if t is str else (0 if t is int else (0.0 if t is float else None))
    return WorkerConfig(**values)


def test_fit_with_the_heads_dashboard_address_submits_a_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataclasses

    import ray

    from affectflow.config import load_params
    from affectflow.stages.train import driver

    def no_ray(*a: object, **k: object) -> None:
        raise AssertionError("no Ray Client / local Ray: the job runs the driver on the cluster")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setenv("RAY_ADDRESS", "http://affectflow-ray-head-svc.ml.svc.cluster.local:8265")
    seen: dict = {}
    monkeypatch.setattr(driver, "submit", lambda tc, cfg, name, address: seen.update(address=address) or {"x": 1})
    cfg = dataclasses.replace(_worker_config_stub(tmp_path), storage=str(tmp_path / "ray"), inputs="packed")
    assert driver.fit(load_params(None, {"train.num_workers": 2}).train, cfg, "run") == {"x": 1}
    assert seen["address"].endswith(":8265")
