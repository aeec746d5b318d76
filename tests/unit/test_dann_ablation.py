"""`affectflow ablate dann`'s honest DANN row: the adversary setting is chosen per fold on the
target's validation speakers, never on its test speakers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from affectflow.config import ConfigError, load_params
from affectflow.studies.dann import AblationError, resolve_selection, select_members, target_rows

GRID = ["quick", "balanced", "slow"]


def _rec(fold: int, seed: int, member: str | None, val: float, test: float, condition: str = "dann_selected") -> dict:
    return {"condition": condition, "member": member, "fold": fold, "seed": seed, "target_val_uar": val,
            "target_uar": test, "source_test_uar": 0.5, "train_seconds": 1.0}


def test_choice_follows_mean_validation_uar_per_fold_and_ignores_test():
    recs = [
        # fold 0: balanced is best on validation (mean over seeds), quick is best on test
        _rec(0, 0, "quick", 0.40, 0.90), _rec(0, 1, "quick", 0.50, 0.90),
        _rec(0, 0, "balanced", 0.60, 0.30), _rec(0, 1, "balanced", 0.45, 0.30),
        _rec(0, 0, "slow", 0.70, 0.10), _rec(0, 1, "slow", 0.20, 0.10),
        # fold 1: a tie on validation goes to the earlier grid member
        _rec(1, 0, "quick", 0.5, 0.1), _rec(1, 0, "balanced", 0.5, 0.9), _rec(1, 0, "slow", 0.4, 0.9),
    ]
    assert select_members(recs, GRID) == {0: "balanced", 1: "quick"}
    flipped = [{**r, "target_uar": 1.0 - r["target_uar"]} for r in recs]
    assert select_members(flipped, GRID) == {0: "balanced", 1: "quick"}


def test_resolve_selection_keeps_the_chosen_members_predictions_and_every_member_for_the_grid():
    recs = [_rec(0, 0, "quick", 0.2, 0.9), _rec(0, 0, "balanced", 0.8, 0.1), _rec(0, 0, None, 0.5, 0.5, "dann")]
    pred = pd.DataFrame({"utt_id": ["a", "a", "a"], "speaker": ["s"] * 3, "emotion": ["sad"] * 3,
                         "predicted": ["sad", "angry", "sad"], "condition": ["dann_selected", "dann_selected", "dann"],
                         "member": ["quick", "balanced", ""], "seed": [0] * 3, "fold": [0] * 3})
    out, p, chosen = resolve_selection(recs, pred, ["quick", "balanced"])
    assert chosen == {0: "balanced"}
    sel = p[p["condition"] == "dann_selected"]
    assert sel["member"].tolist() == ["balanced"] and sel["predicted"].tolist() == ["angry"]
    assert set(p["condition"]) == {"dann", "dann_selected", "dann_selected:quick", "dann_selected:balanced"}
    assert [r["member"] for r in out if r["condition"] == "dann_selected"] == ["balanced"]


def test_validation_rows_that_share_a_test_speaker_are_refused(tmp_path: Path):
    df = pd.DataFrame({"corpus": ["emodb"] * 3, "split": ["val", "test", "train"], "speaker": ["s1", "s1", "s2"],
                       "emotion": ["sad", "sad", "sad"]})
    with pytest.raises(AblationError, match="both validation and test"):
        target_rows(df, "emodb", "val", ["sad"], tmp_path / "m.parquet")
    with pytest.raises(AblationError, match="split 'val'"):
        target_rows(df.assign(split=["train", "test", "train"]), "emodb", "val", ["sad"], tmp_path / "m.parquet")


def test_grid_members_must_be_pretrain_settings():
    p = load_params(None, {"studies.dann.grid": {"ok": {"lambda_max": 0.5}}})
    assert p.studies.dann.grid == {"ok": {"lambda_max": 0.5}}
    with pytest.raises(ConfigError, match="lamda_max"):
        load_params(None, {"studies.dann.grid": {"typo": {"lamda_max": 0.5}}})
