"""`affectflow ablate augmentation`: subsets, the unfiltered arm, resumable cells, aggregation, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from base_settings import base_params
from test_augment import CLASSES, make_feature_folder  # same folder (pytest puts it on sys.path)

from affectflow.config import ConfigError, load_params
from affectflow.contracts.manifest import write_manifest
from affectflow.studies import augmentation as A


def _manifest(n_train_speakers: int) -> pd.DataFrame:
    rows = []
    for s in range(n_train_speakers + 2):
        split = "test" if s == 0 else ("val" if s == 1 else "train")
        for i in range(3):
            rows.append({"utt_id": f"c/{s}-{i}", "speaker": f"c/{s:02d}", "gender": "female" if s % 2 else "male",
                         "split": split})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_train, fraction, expected", [(14, 0.25, 3), (8, 0.25, 2), (3, 0.25, 1), (4, 1.0, 4)])
def test_low_resource_keeps_at_most_the_fraction_of_training_speakers(n_train: int, fraction: float,
                                                                      expected: int) -> None:
    df = _manifest(n_train)
    sub, kept = A.low_resource(df, fraction, seed=0)
    assert len(kept) == expected and len(kept) <= max(1, fraction * n_train)
    assert set(sub.loc[sub["split"] == "train", "speaker"]) == set(kept)
    # Validation and test rows are untouched.
    for split in ("val", "test"):
        assert sorted(sub.loc[sub["split"] == split, "utt_id"]) == sorted(df.loc[df["split"] == split, "utt_id"])
    if expected >= 2:  # alternates genders
        genders = sub[sub["speaker"].isin(kept)].groupby("speaker")["gender"].first()
        assert genders.nunique() == 2
    # Different seeds draw different subsets (the seeds also vary which speakers are scarce).
    subsets = {tuple(A.low_resource(df, fraction, seed=s)[1]) for s in range(6)}
    assert len(subsets) > 1 or expected == n_train


def test_unfiltered_copy_keeps_everything_else_identical(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    kept = np.array([True, False, False])
    np.savez(src / "synthetic.npz", X=np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 1]),
             classes=np.array(["a", "b"]), feature=np.array("egemaps"), realness=np.zeros(3, np.float32),
             agreement=np.ones(3, np.float32), nn_distance=np.ones(3, np.float32),
             knn_inside=np.ones(3, bool), kept=kept)
    dst = A.unfiltered_copy(src, tmp_path / "dst")
    with np.load(dst / "synthetic.npz") as z, np.load(src / "synthetic.npz") as s:
        assert z["kept"].tolist() == [True, True, True]
        assert s["kept"].tolist() == kept.tolist()  # the source is not modified
        for k in ("X", "y", "classes", "feature", "realness"):
            assert np.array_equal(z[k], s[k])


def test_with_overrides_validates_and_names_unknown_keys() -> None:
    p = load_params(None)
    q = A.with_overrides(p, {"train.seed": 4, "augment.generator": "aaec"})
    assert q.train.seed == 4 and q.augment.generator == "aaec" and p.train.seed == 0
    with pytest.raises(ConfigError, match=r"augment\.nope"):
        A.with_overrides(p, {"augment.nope": 1})


def _cell(setting: str, seed: int, fold: int, uars: dict[str, float]) -> dict[str, Any]:
    runs: dict[str, Any] = {"none": {"uar": uars["none"]}}
    for gen in ("wgan_gp",):
        runs[f"{gen}/augment"] = {"generated": 100, "kept": 40, "train_seconds": 1.0, "precision_before": 0.5,
                                  "precision_after": 0.9, "frechet_before": 1.0, "frechet_after": 2.0}
        for v in ("unfiltered", "filtered"):
            runs[f"{gen}/{v}"] = {"uar": uars[v], "n_synthetic": 10}
    return {"setting": setting, "seed": seed, "fold": fold, "runs": runs}


def test_aggregate_means_folds_per_seed_then_seeds() -> None:
    cells = [
        _cell("full", 0, 0, {"none": 0.50, "unfiltered": 0.48, "filtered": 0.52}),
        _cell("full", 0, 1, {"none": 0.60, "unfiltered": 0.58, "filtered": 0.64}),
        _cell("full", 1, 0, {"none": 0.40, "unfiltered": 0.40, "filtered": 0.44}),
        _cell("full", 1, 1, {"none": 0.50, "unfiltered": 0.50, "filtered": 0.52}),
    ]
    agg = A.aggregate(cells, ["wgan_gp"])
    r = agg["full"]["wgan_gp"]
    assert r["none"]["per_seed"] == pytest.approx([0.55, 0.45])
    assert r["none"]["mean"] == pytest.approx(0.50) and r["none"]["std"] == pytest.approx(np.std([0.55, 0.45], ddof=1))
    assert r["filtered"]["per_seed"] == pytest.approx([0.58, 0.48])
    assert r["filtered_minus_none"]["mean"] == pytest.approx(0.03)
    assert r["filtered_minus_unfiltered"]["mean"] == pytest.approx(0.04)
    assert r["kept_fraction"] == pytest.approx(0.4) and "low_resource" not in agg
    table = A.render_table(agg, {"model": "egemaps_mlp", "seeds": [0, 1], "folds": [0, 1], "synthetic_ratio": 1.0,
                                 "balance_minority": False, "low_resource_fraction": 0.25})
    assert "| full | wgan_gp | 50.0 ± 7.1 | 49.0 ± 5.7 | 53.0 ± 7.1 | +3.0 ± 0.0 | +4.0 ± 1.4 | 40 % | 10 / 10 |" in table


def test_study_runs_every_cell_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestration with the recognizer replaced by a stub that records what it was given."""
    torch.set_num_threads(1)
    features = tmp_path / "features"
    df = make_feature_folder(features, speakers=6, per_class=3)
    manifest = tmp_path / "manifest.parquet"
    write_manifest(df, manifest)
    calls: list[dict[str, Any]] = []

    def fake_train_eval(params, manifest_path, features_dir, run_dir, synthetic):
        m = pd.read_parquet(manifest_path)
        n_train = int((m["split"] == "train").sum())
        n_syn = 0
        if synthetic is not None:
            with np.load(Path(synthetic) / "synthetic.npz") as z:
                n_syn = int(z["kept"].sum())
        calls.append({"run_dir": str(run_dir), "synthetic": synthetic, "n_train": n_train, "n_syn": n_syn,
                      "seed": params.train.seed, "ratio": params.train.synthetic_ratio,
                      "schedule": params.train.synthetic_schedule, "weight": params.train.synthetic_weight})
        return {"uar": 0.5 + 0.001 * n_syn, "wa": 0.5, "macro_f1": 0.5, "val_uar": 0.5, "n_train": n_train,
                "n_synthetic": n_syn, "seconds": 0.0}

    monkeypatch.setattr(A, "_train_eval", fake_train_eval)
    params = base_params({
        "ingest.classes": CLASSES, "splits.n_folds": 3, "splits.val_fraction": 0.25,
        "augment.epochs": 2, "augment.hidden": [16], "augment.samples_per_class": 6, "augment.agreement_hidden": [],
        "augment.embedding_pca": 4, "augment.knn_k": 2, "augment.device": "cpu", "augment.batch_size": 8,
        "studies.augmentation.seeds": [0, 1], "studies.augmentation.folds": [0], "studies.augmentation.generators": ["wgan_gp"],
        "studies.augmentation.low_resource_fraction": 0.5, "studies.augmentation.low_resource_epochs": 3,
    })
    res = A.ablate_augmentation(params, manifest, features, tmp_path / "study")
    # 2 settings x 2 seeds x 1 fold x (none + unfiltered + filtered)
    assert len(calls) == 12
    low = [c for c in calls if "low_resource" in c["run_dir"]]
    full = [c for c in calls if "/full/" in c["run_dir"]]
    assert max(c["n_train"] for c in low) < min(c["n_train"] for c in full)
    assert all(c["ratio"] == 0 for c in calls if c["synthetic"] is None)
    assert all(c["n_syn"] == 24 for c in calls if c["synthetic"] and "unfiltered" in str(c["synthetic"]))
    assert all(c["run_dir"].endswith("_ratio1") for c in calls if c["synthetic"])
    assert {c["seed"] for c in calls} == {0, 1}
    cell = json.loads((tmp_path / "study" / "low_resource" / "seed1" / "fold0" / "cell.json").read_text())
    aug = json.loads((tmp_path / "study" / "low_resource" / "seed1" / "fold0" / "wgan_gp" / "augment" /
                      "report.json").read_text())
    assert aug["training"]["epochs"] == 3  # low_resource_epochs
    assert aug["n_real"] == 3 * len(CLASSES) * len(cell["train_speakers"])  # generator saw the subset only
    assert res.table_path == res.out_dir / "table_ratio1.md" and res.table_path.read_text() == res.table_md
    assert "| full | wgan_gp |" in res.table_md and "| low-resource | wgan_gp |" in res.table_md
    summary = json.loads((res.out_dir / "summary_ratio1.json").read_text())
    assert set(summary["results"]) == {"full", "low_resource"}
    # Resuming finds every run cached: nothing is trained again.
    calls.clear()
    A.ablate_augmentation(params, manifest, features, tmp_path / "study")
    assert calls == []
    # Another synthetic ratio trains new recognizers on the same generators (no augment re-run).
    other = A.with_overrides(params, {"studies.augmentation.synthetic_ratio": 0.5})
    res = A.ablate_augmentation(other, manifest, features, tmp_path / "study")
    assert len(calls) == 8 and all(c["ratio"] == 0.5 and c["run_dir"].endswith("_ratio0.5") for c in calls)
    assert res.table_path.name == "table_ratio0.5.md"
    # The refocus settings reach train.* and name new runs; the generators are reused here too.
    calls.clear()
    fade = A.with_overrides(params, {"studies.augmentation.synthetic_schedule": "fade",
                                     "studies.augmentation.synthetic_weight": 0.5})
    res = A.ablate_augmentation(fade, manifest, features, tmp_path / "study")
    assert len(calls) == 8 and all(c["run_dir"].endswith("_ratio1_fade0.5_w0.5") for c in calls)
    assert all(c["schedule"] == "fade" and c["weight"] == 0.5 for c in calls)
    assert res.table_path.name == "table_ratio1_fade0.5_w0.5.md" and "fade out linearly by 50% of the epochs" in res.table_md
    assert (res.out_dir / "summary_ratio1_fade0.5_w0.5.json").is_file()


@pytest.mark.parametrize(("overrides", "tag"), [
    ({}, "ratio1"),
    ({"synthetic_ratio": 0.5, "balance_minority": True}, "ratio0.5_balanced"),
    ({"synthetic_fade_fraction": 0.3}, "ratio1"),  # no fade: the fraction does nothing, names nothing
    ({"synthetic_schedule": "fade"}, "ratio1_fade0.5"),
    ({"synthetic_schedule": "fade", "synthetic_fade_fraction": 0.3, "synthetic_weight": 0.25}, "ratio1_fade0.3_w0.25"),
])
def test_recognizer_tag_names_only_settings_that_are_not_the_defaults(overrides: dict[str, Any], tag: str) -> None:
    from affectflow.config import AugmentAblationConfig

    assert A.recognizer_tag(AugmentAblationConfig(**overrides)) == tag


def test_cli_registers_the_study() -> None:
    from affectflow.cli import COMMANDS, build_parser, load_commands

    load_commands()
    assert "ablate" in COMMANDS and "augment" in COMMANDS
    args = build_parser().parse_args(["ablate", "augmentation", "--out", "x", "--set", "augment.epochs=3"])
    assert args.study == "augmentation" and args.study_overrides == ["augment.epochs=3"]
