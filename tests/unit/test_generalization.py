"""Leave-one-corpus-out study (`affectflow ablate generalization`) on three generated corpora, one of
them a CSV manifest (the way a user brings a corpus nobody here has seen): every cell trains on the
other corpora only, scores every held-out clip over the study's classes, and the held-out corpus
never reaches labelled training; candidates of `select` are chosen without it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from base_settings import base_params

from affectflow.contracts.manifest import read_manifest
from affectflow.corpora.demo import make_ravdess_like, utterance
from affectflow.studies import generalization as G

CLASSES = ["angry", "happy", "neutral", "sad"]
SR = 16000


def csv_corpus(root: Path, name: str, speakers: range, gain: float, clips: int = 3) -> Path:
    """A corpus as a CSV manifest (path, speaker, emotion, gender): another 'recording condition'."""
    rows = []
    for spk in speakers:
        for emo in CLASSES:
            for i in range(clips):
                rel = f"{name}_{spk}/{emo}_{i}.wav"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                x = utterance(emo, spk, seed=spk * 100 + i + hash(emo) % 50, sr=SR, duration=1.0) * gain
                sf.write(root / rel, np.clip(x, -1, 1), SR, subtype="PCM_16")
                rows.append({"path": rel, "speaker": str(spk), "emotion": emo,
                             "gender": "female" if spk % 2 == 0 else "male"})
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("loco")
    make_ravdess_like(base / "alpha", actors=6, emotions=tuple(CLASSES), clips_per_emotion=3, duration=1.0)
    csv_corpus(base / "beta", "beta", range(11, 15), gain=0.4)
    csv_corpus(base / "gamma", "gamma", range(21, 25), gain=1.6)
    return base


def _params(corpora: Path, tmp: Path, **over):
    conditions = over.pop("conditions", {
        "reference": {"method": "svm"},
        "multi": {"method": "recognizer", "overrides": {"train.normalize": "corpus", "train.corpus_balance": True}},
    })
    return base_params({
        "paths.workdir": str(tmp / "work"), "paths.data_root": str(corpora),
        "ingest.workers": 1, "features.workers": 1,
        "train.model": "egemaps_mlp", "train.epochs": 3, "train.patience": 3, "train.batch_size": 16,
        "train.mlp": {"hidden": [16], "dropout": 0.1},
        "pretrain.epochs": 2, "pretrain.probe_folds": 2, "pretrain.batch_size": 16,
        "studies.generalization.corpora": [
            {"name": "alpha", "adapter": "ravdess", "root": "alpha"},
            {"name": "beta", "adapter": "csv", "root": "beta/manifest.csv"},
            {"name": "gamma", "adapter": "csv", "root": "gamma/manifest.csv"}],
        "studies.generalization.seeds": [0],
        "studies.generalization.conditions": conditions,
        **over,
    })


def test_every_held_out_corpus_is_scored_on_all_its_clips(corpora: Path, tmp_path: Path) -> None:
    res = G.run_study(_params(corpora, tmp_path), tmp_path / "study")
    s = res.summary
    assert s["held_out"] == ["alpha", "beta", "gamma"] and s["conditions"] == ["reference", "multi"]
    df = read_manifest(tmp_path / "study" / "ingest" / "manifest.parquet")
    for name in s["conditions"]:
        for held in s["held_out"]:
            r = s["table"][name]["per_corpus"][held]
            assert 0 <= r["uar_mean"] <= 100 and r["seeds"] == 1
            assert set(r["per_class_recall"]) == set(CLASSES)
    cells = pd.read_parquet(tmp_path / "study" / "cells.parquet")
    for _, c in cells.iterrows():
        assert c["n"] == int((df["corpus"] == c["held_out"]).sum())  # every clip of the held-out corpus
    # a recognizer cell's model never saw a held-out clip, labelled or not
    for cell in (tmp_path / "study" / "cells").glob("heldout_*/multi/seed0-*"):
        held = cell.parent.parent.name.removeprefix("heldout_")
        meta = json.loads((cell / "train" / "model" / "model.json").read_text())
        assert held not in meta["train"]["corpora"]
        assert not {s for s in meta["train"]["train_speakers"] + meta["train"]["val_speakers"]
                    if s.startswith(f"{held}/")}
        pred = pd.read_parquet(cell / "predictions.parquet")
        assert set(pred["corpus"]) == {held} and set(pred["predicted"]) <= set(CLASSES)
        for column in G.PROTOCOLS.values():  # offline and streamed predictions of every clip
            assert set(pred[column]) <= set(CLASSES)
    # every row is reported on both protocols, with per-class recall and collapse flags
    assert list(s["protocols"]) == list(G.PROTOCOLS)
    for table in s["protocols"].values():
        for name in s["conditions"]:
            assert {"any_collapse", "mean_uar"} <= set(table[name])
            assert set(table[name]["per_corpus"]["alpha"]["per_class_recall"]) == set(CLASSES)
    assert s["protocols"]["offline"] == s["table"]
    table = (tmp_path / "study" / "table.md").read_text()
    assert "| reference |" in table and "| multi |" in table and "mean over corpora" in table
    assert "## Streamed: one clip at a time" in table and "Per-class recall (%, mean over seeds), streamed" in table
    assert (tmp_path / "study" / "generalization.png").stat().st_size > 0
    # cached: a second run computes nothing new and gives the same table
    again = G.run_study(_params(corpora, tmp_path), tmp_path / "study")
    assert again.summary["table"] == s["table"]


def test_selection_and_dann_never_see_the_held_out_corpus(corpora: Path, tmp_path: Path) -> None:
    conditions = {"dann": {"method": "dann", "overrides": {"pretrain.normalize": "corpus"},
                           "select": {"weak": {"pretrain.lambda_max": 0.1}, "strong": {"pretrain.lambda_max": 1.0}}}}
    p = _params(corpora, tmp_path, conditions=conditions, **{"studies.generalization.held_out": ["gamma"]})
    res = G.run_study(p, tmp_path / "study")
    sel = res.summary["selection"]["gamma/dann"]
    assert sel["chosen"] in ("weak", "strong") and set(sel["inner_uar"]) == {"weak", "strong"}
    sel_dir = tmp_path / "study" / "cells" / "heldout_gamma" / "dann" / "selection"
    assert {d.name for d in sel_dir.iterdir()} == {"inner_alpha", "inner_beta"}  # gamma is never an inner corpus
    for man in sel_dir.rglob("*.parquet"):
        if man.name in ("manifest.parquet", "adaptation.parquet"):
            assert "gamma" not in set(pd.read_parquet(man)["corpus"])
    final = next((tmp_path / "study" / "cells" / "heldout_gamma" / "dann").glob("seed0-*"))
    adapt = pd.read_parquet(final / "adaptation.parquet")
    g = adapt[adapt["corpus"] == "gamma"]
    assert len(g) and set(g["role"]) == {"target"} and set(g["emotion"]) == {""} and set(g["label"]) == {""}
    enc = json.loads((final / "pretrain" / "encoder" / "model.json").read_text())
    assert enc["pretrain"]["targets"] == ["gamma"] and "gamma" not in enc["train"]["corpora"]


def test_the_guards_refuse_a_held_out_clip_in_labelled_training(corpora: Path, tmp_path: Path) -> None:
    df = pd.DataFrame({"corpus": ["a", "a", "h"], "role": ["source"] * 3, "sha256": ["1", "2", "3"],
                       "split": ["train", "val", "train"], "label": ["sad"] * 3, "emotion": ["sad"] * 3})
    with pytest.raises(G.HeldOutLeakError, match="held-out corpus h: 1 of its clips"):
        G.assert_no_held_out_in_training(df, "h")
    copy = df.assign(sha256=["1", "2", "1"], role=["source", "source", "heldout"])
    with pytest.raises(G.HeldOutLeakError, match="byte-identical"):
        G.assert_no_held_out_in_training(copy, "h")
    m = G.training_manifest(df, ["a"], "h")
    assert m.loc[m["corpus"] == "h", ["role", "split"]].drop_duplicates().values.tolist() == [["heldout", "test"]]
    with pytest.raises(G.StudyError, match="held_out: \\['nope'\\]"):
        G.held_out_names(_params(corpora, tmp_path, **{"studies.generalization.held_out": ["nope"]}).studies.generalization)


def test_the_setting_to_ship_is_chosen_over_every_corpus_and_changes_no_table_number(corpora: Path,
                                                                                   tmp_path: Path) -> None:
    conditions = {"picked": {"method": "recognizer", "select": {"short": {"train.epochs": 1},
                                                                 "long": {"train.epochs": 3}}}}
    p = _params(corpora, tmp_path, conditions=conditions, **{"studies.generalization.held_out": ["gamma"]})
    s = G.run_study(p, tmp_path / "study").summary
    dep = s["deployment"]["picked"]
    assert set(dep["loso_uar"]) == {"short", "long"} and dep["chosen"] == max(dep["loso_uar"], key=dep["loso_uar"].get)
    assert dep["settings"] == conditions["picked"]["select"][dep["chosen"]]
    # each candidate was scored with every study corpus held out in turn (the table's own gamma cell included)
    cells = tmp_path / "study" / "cells"
    for held in ("alpha", "beta", "gamma"):
        assert len(list((cells / f"heldout_{held}" / "picked").glob("seed0-*"))) == 2
    # the table's gamma number is the cell of the candidate gamma chose without itself
    assert s["selection"]["gamma/picked"]["chosen"] in ("short", "long")
    gamma = [json.loads((c / G.CELL_FILE).read_text())["uar"] for c in (cells / "heldout_gamma" / "picked").glob("seed0-*")]
    assert any(100 * u == pytest.approx(s["table"]["picked"]["per_corpus"]["gamma"]["uar_mean"]) for u in gamma)
    assert "What to ship" in (tmp_path / "study" / "table.md").read_text()


def test_the_augment_condition_trains_its_generator_without_the_held_out_corpus(corpora: Path,
                                                                                tmp_path: Path) -> None:
    conditions = {"aug": {"method": "augment", "overrides": {
        "train.synthetic_ratio": 0.5, "augment.epochs": 2, "augment.samples_per_class": 20,
        "augment.filters": []}}}
    p = _params(corpora, tmp_path, conditions=conditions, **{"studies.generalization.held_out": ["gamma"]})
    s = G.run_study(p, tmp_path / "study").summary
    assert s["table"]["aug"]["per_corpus"]["gamma"]["seeds"] == 1
    cell = next((tmp_path / "study" / "cells" / "heldout_gamma" / "aug").glob("seed0-*"))
    generator_rows = read_manifest(cell / "augment_manifest.parquet")
    assert set(generator_rows["corpus"]) == {"alpha", "beta"}
    train_summary = json.loads((cell / "train" / "summary.json").read_text())
    assert train_summary["n_synthetic"] > 0  # the recognizer saw the kept synthetic rows


def test_a_cell_key_follows_only_the_sections_its_stages_read(corpora: Path, tmp_path: Path) -> None:
    p = _params(corpora, tmp_path)
    key = {m: G.cell_key(m, p, ["alpha", "beta"], "gamma") for m in G.METHODS}
    aug = p.model_copy(update={"augment": p.augment.model_copy(update={"epochs": p.augment.epochs + 1})})
    assert G.cell_key("recognizer", aug, ["alpha", "beta"], "gamma") == key["recognizer"]
    assert G.cell_key("dann", aug, ["alpha", "beta"], "gamma") == key["dann"]
    assert G.cell_key("augment", aug, ["alpha", "beta"], "gamma") != key["augment"]
    tr = p.model_copy(update={"train": p.train.model_copy(update={"epochs": p.train.epochs + 1})})
    assert G.cell_key("recognizer", tr, ["alpha", "beta"], "gamma") != key["recognizer"]
    assert G.cell_key("svm", tr, ["alpha", "beta"], "gamma") == key["svm"]
    moved = p.model_copy(update={"tracking": p.tracking.model_copy(update={"uri": "sqlite:///elsewhere.db"})})
    assert G.cell_key("recognizer", moved, ["alpha", "beta"], "gamma") == key["recognizer"]
    assert G.cell_key("recognizer", p, ["alpha", "beta"], "beta") != key["recognizer"]


def test_latent_and_aaec_classifier_conditions_learn_from_the_training_corpora_only(corpora: Path,
                                                                                   tmp_path: Path) -> None:
    small = {"augment.epochs": 2, "augment.samples_per_class": 10, "augment.hidden": [16, 16],
             "augment.latent_dim": 4, "augment.embedding_pca": 4, "augment.aaec_gru_hidden": 8}
    conditions = {
        "latent": {"method": "latent", "overrides": {**small, "augment.style": "speaker", "augment.style_dim": 3,
                                                     "augment.filters": [], "augment.latent.epochs": 2}},
        "aaec_cls": {"method": "aaec_classifier", "overrides": small},
    }
    p = _params(corpora, tmp_path, conditions=conditions, **{"studies.generalization.held_out": ["gamma"]})
    s = G.run_study(p, tmp_path / "study").summary
    for name in conditions:
        assert s["table"][name]["per_corpus"]["gamma"]["seeds"] == 1
    cell = next((tmp_path / "study" / "cells" / "heldout_gamma" / "latent").glob("seed0-*"))
    report = json.loads((cell / "latent" / "report.json").read_text())
    assert report["style"]["n_corpora"] == 2 and report["head"]["n_synthetic"] > 0  # alpha + beta speakers only
    meta = json.loads((cell / "latent" / "model" / "model.json").read_text())
    assert meta["train"]["latent_augmentation"]["n_synthetic"] == report["head"]["n_synthetic"]
    assert "gamma" not in meta["train"]["corpora"]
