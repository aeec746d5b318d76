"""Latent-feature augmentation (`affectflow.stages.augment.latent`): a trained recognizer's training
clips as embeddings, style-conditioned synthesis and filtering there, and a head retrained on real +
kept synthetic embeddings; the encoder and the base model folder stay untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recognizer_support import corpus, tiny_params
from torch import nn

from affectflow.config import LatentConfig
from affectflow.contracts.manifest import read_manifest
from affectflow.serving.recognizer import load_model_dir, predict_embeddings
from affectflow.stages.augment.latent import (
    LatentError,
    augment_latent,
    embedding_set,
    head_rows,
    retrain_head,
)

AUGMENT = {
    "augment.epochs": 200, "augment.latent_dim": 8, "augment.hidden": [32, 32], "augment.batch_size": 16,
    "augment.samples_per_class": 12, "augment.embedding_pca": 4, "augment.knn_k": 3, "augment.device": "cpu",
    "augment.style": "speaker", "augment.style_dim": 3,
    "augment.filters": ["agreement", "style_novelty"],
    "augment.latent.epochs": 4, "augment.latent.batch_size": 16,
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def base_model(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny eGeMAPS MLP trained on the generated corpus (module-wide, read-only)."""
    from affectflow.stages.train.stage import train

    params, manifest, features = corpus(synth_root, tmp_path_factory)
    params = tiny_params(params, **{"train.model": "egemaps_mlp", "train.epochs": 15})
    out = tmp_path_factory.mktemp("latent_base")
    tr = train(params, manifest, features, out / "train")
    return {"params": params, "manifest": manifest, "features": features, "model_dir": tr.model_dir}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_latent_path_end_to_end(base_model: dict, tmp_path: Path) -> None:
    params = tiny_params(base_model["params"], **{"train.model": "egemaps_mlp"}, **AUGMENT)
    before = _digest(base_model["model_dir"])
    res = augment_latent(params, base_model["model_dir"], base_model["manifest"], base_model["features"],
                         tmp_path / "latent")
    assert _digest(base_model["model_dir"]) == before  # the base model folder is not touched

    base, new = load_model_dir(base_model["model_dir"]), load_model_dir(res.model_dir)
    assert new.classes == base.classes and new.meta.arch == base.meta.arch
    for name, w in base.model.encoder.state_dict().items():
        assert torch.equal(w, new.model.encoder.state_dict()[name]), f"encoder weight {name} changed"
    assert not torch.equal(base.model.head.weight, new.model.head.weight)
    assert base.meta.calibration is not None and new.meta.calibration is None  # the old head's temperature is dropped

    facts = new.meta.train.latent_augmentation
    assert facts is not None and facts["style"] == "speaker" and facts["reinit"] is True
    assert 0 < facts["n_synthetic"] <= res.summary["kept"] and facts["n_real"] == res.summary["head_real"]
    assert facts["n_synthetic"] <= round(params.augment.latent.ratio * facts["n_real"])

    report = json.loads(res.report_json.read_text())
    n_classes = len(base.classes)
    assert report["totals"]["generated"] == n_classes * 12
    for c in base.classes:
        row = report["per_class"][c]
        assert row["real"] > 0 and row["kept"] + row["rejected"] == row["generated"] == 12
    assert report["totals"]["kept"] <= min(report["totals"]["passed"][f] for f in params.augment.filters)
    assert report["style"]["per_class"]["all"]["n_kept"] == report["totals"]["kept"]
    assert report["head"]["loss_last"] < report["head"]["loss_first"]
    md = (res.out_dir / "report.md").read_text()
    assert "Head retrained" in md and "## Style: what was added" in md

    # The retrained model reads the same embeddings its head was trained on.
    df = read_manifest(base_model["manifest"])
    real = embedding_set(new, df, base_model["features"], "manifest")
    assert real.X.shape == (len(real.y), new.model.head.in_features)
    assert len(set(real.speakers)) >= 2 and set(real.corpora) == {"ravdess"}


def test_ratio_zero_is_the_real_only_control_through_the_cli(base_model: dict, tmp_path: Path) -> None:
    from affectflow.cli import main
    from affectflow.config import params_yaml

    params = tiny_params(base_model["params"], **{"train.model": "egemaps_mlp"}, **AUGMENT)
    (tmp_path / "params.yaml").write_text(params_yaml(params))
    assert main(["augment-latent", "--params", str(tmp_path / "params.yaml"), "--set", "augment.latent.ratio=0",
                 "--model", str(base_model["model_dir"]), "--manifest", str(base_model["manifest"]),
                 "--features", str(base_model["features"]), "--out", str(tmp_path / "latent")]) == 0
    facts = load_model_dir(tmp_path / "latent" / "model").meta.train.latent_augmentation
    assert facts["ratio"] == 0 and facts["n_synthetic"] == 0 and facts["n_real"] > 0


def test_no_training_rows_is_a_clear_error(base_model: dict, tmp_path: Path) -> None:
    params = tiny_params(base_model["params"], **{"train.model": "egemaps_mlp"}, **AUGMENT)
    df = read_manifest(base_model["manifest"]).assign(split="test")
    with pytest.raises(LatentError, match="'split'"):
        augment_latent(params, base_model["model_dir"], df, base_model["features"], tmp_path / "latent")
    assert not (tmp_path / "latent").exists()  # nothing half-written


def test_head_rows_spread_the_budget_over_classes() -> None:
    y = np.array([0] * 50 + [1] * 50 + [2] * 3)
    kept = np.ones(len(y), bool)
    kept[:10] = False
    rows = head_rows(kept, y, 30, seed=0)
    assert len(rows) == 30 and kept[rows].all() and len(set(rows)) == 30
    counts = np.bincount(y[rows], minlength=3)
    assert counts[2] == 3 and abs(counts[0] - counts[1]) <= 1  # the short class gives all; the rest split evenly
    assert np.array_equal(head_rows(kept, y, 500, seed=0), np.flatnonzero(kept))  # budget above the pool
    assert np.array_equal(rows, head_rows(kept, y, 30, seed=0))
    assert len(head_rows(kept, y, 0, seed=0)) == 0


def test_retrain_head_fresh_or_continued() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    E = (np.eye(3, 6)[y] * 3 + 0.3 * rng.standard_normal((120, 6))).astype(np.float32)
    head = nn.Linear(6, 3)
    fresh, losses = retrain_head(head, E, y, 3, LatentConfig(epochs=20, lr=1e-2), seed=0)
    assert losses[-1] < 0.5 * losses[0]
    pred = fresh(torch.from_numpy(E)).argmax(1).numpy()
    assert (pred == y).mean() > 0.95
    assert not torch.equal(fresh.weight, head.weight)
    # Continued with a negligible step: still the trained head; the original object is not modified.
    w0 = head.weight.detach().clone()
    kept_on, _ = retrain_head(head, E, y, 3, LatentConfig(epochs=1, lr=1e-12, weight_decay=0.0, reinit=False), seed=0)
    assert torch.allclose(kept_on.weight, w0, atol=1e-8) and torch.equal(head.weight, w0)


def test_predict_embeddings_is_what_the_head_reads(base_model: dict) -> None:
    rec = load_model_dir(base_model["model_dir"])
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(88).astype(np.float32) for _ in range(5)]
    E = predict_embeddings(rec.model, arrays, rec.device, batch_size=2)
    assert E.shape == (5, rec.model.head.in_features)
    with torch.no_grad():
        direct = rec.model(torch.from_numpy(np.stack(arrays)), None)
        assert torch.allclose(rec.model.head(E), direct, atol=1e-5)
