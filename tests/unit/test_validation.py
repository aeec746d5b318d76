"""The data gate: passes on a clean ingest, and each failure kind names the check and the offending rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from affectflow.config import Params, params_yaml
from affectflow.contracts.feature_store import INDEX, INDEX_COLUMNS, feature_path, save_array
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.features.keys import feature_keys
from affectflow.stages.ingest import ingest
from affectflow.stages.validate import GateResult, validate


@pytest.fixture(scope="module")
def _module_cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def manifest_df(synth_params: Params, tmp_path: Path, _module_cache: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The generated corpus ingested once per module (the slow part); each test edits its own copy."""
    if "df" not in _module_cache:
        _module_cache["df"] = read_manifest(ingest(synth_params, tmp_path / "ingest").manifest)
    return _module_cache["df"].copy()


def run_gate(params: Params, df: pd.DataFrame, tmp_path: Path, features: Path | None = None) -> GateResult:
    path = tmp_path / "manifest.parquet"
    write_manifest(df, path)
    return validate(params, path, tmp_path / "validation", features_dir=features)


def checks(res: GateResult) -> dict[str, dict]:
    return {c["check"]: c for c in json.loads(res.report_json.read_text())["checks"]}


def failed(res: GateResult) -> set[str]:
    return {name for name, c in checks(res).items() if not c["success"]}


# ----------------------------------------------------------------------------- passing case
def test_clean_ingest_and_features_pass_and_write_both_reports(synth_params: Params, manifest_df: pd.DataFrame,
                                                                tmp_path: Path) -> None:
    feats = write_features(tmp_path / "features", manifest_df, synth_params)
    res = run_gate(synth_params, manifest_df, tmp_path, features=feats)
    assert res.passed, res.summary["failures"]
    assert res.summary["failed"] == []
    assert res.summary["audio"] == {"checked": len(manifest_df), "decoded": len(manifest_df), "remote_unchecked": 0}
    report = json.loads(res.report_json.read_text())
    assert report["summary"]["passed"] is True
    names = {c["check"] for c in report["checks"]}
    assert {"file_exists", "audio_decodes", "duration_in_range", "emotion_in_classes", "split_valid",
            "sha256_unique", "speaker_single_split", "min_examples_per_class", "not_null:speaker"} <= names
    expected = manifest_df.groupby(["split", "emotion"]).size()
    assert report["class_counts"]["train"]["happy"] == expected[("train", "happy")]
    assert set(report["class_counts"]) == set(manifest_df["split"])
    assert {"logmel:present", "logmel:dim0", "logmel:finite", "logmel:frames", "egemaps:dim0"} <= names
    assert checks(res)["egemaps:dim0"]["kwargs"]["value_set"] == [88]  # eGeMAPSv02 functionals, from opensmile
    assert res.report_md.read_text().startswith("# Data validation gate: PASSED")
    # atomic writes leave nothing but the two reports behind
    assert sorted(p.name for p in res.report_md.parent.iterdir()) == ["report.json", "report.md"]


# ----------------------------------------------------------------------------- manifest failures
def _missing_file(df: pd.DataFrame, tmp: Path) -> list[str]:
    df.loc[0, "path"] = str(tmp / "gone" / "clip.wav")
    return [df.loc[0, "utt_id"]]


def _too_long(df: pd.DataFrame, tmp: Path) -> list[str]:
    df.loc[[1, 2], "duration"] = 1e3  # the header disagrees too: audio_decodes fails as well
    return df.loc[[1, 2], "utt_id"].tolist()


def _bad_label(df: pd.DataFrame, tmp: Path) -> list[str]:
    df.loc[3, "emotion"] = "bored"
    return [df.loc[3, "utt_id"]]


def _null_speaker(df: pd.DataFrame, tmp: Path) -> list[str]:
    df["speaker"] = df["speaker"].astype(object)
    df.loc[6, "speaker"] = None
    return [df.loc[6, "utt_id"]]


def _truncated_file(df: pd.DataFrame, tmp: Path) -> list[str]:
    data = Path(df.loc[7, "path"]).read_bytes()
    bad = tmp / "truncated.wav"
    bad.write_bytes(data[: len(data) // 2])
    df.loc[7, "path"] = str(bad)
    return [df.loc[7, "utt_id"]]


def _spare(df: pd.DataFrame) -> pd.DataFrame:
    """Rows the single-row edits above (rows 0-7) do not touch, from speakers they do not touch."""
    return df[(df.index >= 8) & ~df["speaker"].isin(df.loc[:7, "speaker"].dropna())]


def _copy(df: pd.DataFrame, a: int, b: int) -> list[str]:
    df.loc[b, "sha256"] = df.loc[a, "sha256"]
    return df.loc[[a, b], "utt_id"].tolist()


def _copy_same_split_and_label(df: pd.DataFrame, tmp: Path) -> list[str]:
    rows = _spare(df)
    pair = rows[rows["split"] == "test"].groupby(["speaker", "emotion"]).head(2).index[:2]
    return _copy(df, *pair)


def _copy_other_label(df: pd.DataFrame, tmp: Path) -> list[str]:
    rows = _spare(df)
    val = rows[rows["split"] == "val"]
    a = val.index[0]
    b = val.index[(val["emotion"] != val.loc[a, "emotion"]) & (val["speaker"] == val.loc[a, "speaker"])][0]
    return _copy(df, a, b)


def _copy_across_splits(df: pd.DataFrame, tmp: Path) -> list[str]:
    rows = _spare(df)
    a = rows.index[(rows["split"] == "train") & (rows["emotion"] == "angry")][0]
    b = rows.index[(rows["split"] == "test") & (rows["emotion"] == "angry")][-1]
    return _copy(df, a, b)


CASES: dict[str, tuple[Callable[[pd.DataFrame, Path], list[str]], tuple[str, ...]]] = {
    "missing file": (_missing_file, ("file_exists",)),
    # the header then disagrees with the manifest too
    "too long": (_too_long, ("duration_in_range", "audio_decodes")),
    "bad label": (_bad_label, ("emotion_in_classes",)),
    "null speaker": (_null_speaker, ("not_null:speaker",)),
    "truncated file": (_truncated_file, ("audio_decodes",)),
    "duplicate audio": (_copy_same_split_and_label, ("sha256_unique",)),
    "copy with another label": (_copy_other_label, ("sha256_unique", "copies_agree_on_label")),
    "copy across splits": (_copy_across_splits, ("sha256_unique", "copies_in_one_split")),
}


@pytest.fixture
def broken_gate(synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path,
                _module_cache: dict) -> tuple[GateResult, dict[str, list[str]]]:
    """One gate run on a manifest with every CASES edit applied to different rows (GX runs cost ~1 s)."""
    if "broken" not in _module_cache:
        offending = {case: edit(manifest_df, tmp_path) for case, (edit, _) in CASES.items()}
        _module_cache["broken"] = (run_gate(synth_params, manifest_df, tmp_path), offending)
    return _module_cache["broken"]


def test_broken_manifest_fails_exactly_the_broken_checks(broken_gate: tuple[GateResult, dict]) -> None:
    res, _ = broken_gate
    assert not res.passed
    every = {check for _, names in CASES.values() for check in names}
    assert failed(res) == every
    # a duplicate that stays in one split with one label is a warning; leaks and label conflicts fail
    assert set(res.summary["warnings"]) == {"sha256_unique"}
    assert set(res.summary["failed"]) == every - {"sha256_unique"}
    md = res.report_md.read_text()
    assert md.startswith("# Data validation gate: FAILED")
    assert md.index("## Failed checks") < md.index("## Warnings") < md.index("### ⚠ `sha256_unique`")


@pytest.mark.parametrize("case", list(CASES))
def test_each_manifest_failure_names_its_rows(case: str, broken_gate: tuple[GateResult, dict]) -> None:
    res, offending = broken_gate
    md = res.report_md.read_text()
    for check in CASES[case][1]:
        c = checks(res)[check]
        rows = {u for other, (_, names) in CASES.items() if check in names for u in offending[other]}
        assert c["unexpected_count"] == len(rows)
        shown = {e.get("utt_id") for e in c["examples"]}
        shown |= {u for e in c["examples"] for u in str(e.get("utt_ids", "")).split(", ")}
        assert set(offending[case]) <= shown
        section = md[md.index(f"`{check}` —"):].split("### ")[0]
        assert offending[case][0] in section
        assert check in res.summary["failures"] or check in res.summary["warnings"]


def test_duplicate_within_one_split_only_warns_unless_configured(
        synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path) -> None:
    """RAVDESS ships one byte-identical pair (same actor, emotion, split): reported, not blocking."""
    pair = _copy_same_split_and_label(manifest_df, tmp_path)
    res = run_gate(synth_params, manifest_df, tmp_path)
    assert res.passed and set(res.summary["warnings"]) == {"sha256_unique"}
    (ex,) = checks(res)["sha256_unique"]["examples"]
    assert ex["utt_ids"] == ", ".join(pair) and ex["rows"] == 2
    assert "## Warnings" in res.report_md.read_text()
    synth_params.validation.fail_on_duplicate_audio = True
    strict = run_gate(synth_params, manifest_df, tmp_path)
    assert not strict.passed and strict.summary["failed"] == ["sha256_unique"]


def test_speaker_in_two_splits_names_speaker_and_splits(synth_params: Params, manifest_df: pd.DataFrame,
                                                        tmp_path: Path) -> None:
    speaker = manifest_df.loc[manifest_df["split"] == "test", "speaker"].iloc[0]
    rows = manifest_df.index[manifest_df["speaker"] == speaker]
    manifest_df.loc[rows[::2], "split"] = "train"
    res = run_gate(synth_params, manifest_df, tmp_path)
    assert failed(res) == {"speaker_single_split"}
    c = checks(res)["speaker_single_split"]
    assert c["unexpected_count"] == len(rows)
    assert c["groups"] == 1
    (ex,) = c["examples"]
    assert ex["speaker"] == speaker and ex["rows"] == len(rows)
    assert "test: " in ex["clips_per_split"] and "train: " in ex["clips_per_split"]
    assert speaker in res.report_md.read_text()


def test_class_below_minimum_names_split_and_class(synth_params: Params, manifest_df: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    gone = (manifest_df["split"] == "val") & (manifest_df["emotion"] == "sad")
    assert gone.any()
    res = run_gate(synth_params, manifest_df[~gone].reset_index(drop=True), tmp_path)
    assert failed(res) == {"min_examples_per_class"}
    c = checks(res)["min_examples_per_class"]
    assert c["examples"] == [{"cell": "val/sad", "split": "val", "emotion": "sad", "count": 0}]
    assert "val/sad" in res.report_md.read_text()


def test_minimum_comes_from_params(synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path) -> None:
    counts = manifest_df.groupby(["split", "emotion"]).size()
    synth_params.validation.min_examples_per_class_per_split = int(counts.min()) + 1
    res = run_gate(synth_params, manifest_df, tmp_path)
    c = checks(res)["min_examples_per_class"]
    assert not res.passed and not c["success"]
    assert c["unexpected_count"] == int((counts == counts.min()).sum())


def test_target_corpus_rows_need_no_labels_and_are_not_counted(synth_params: Params, manifest_df: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    """Unlabelled domain-adaptation clips: no class checks, and a test split made only of them is fine."""
    target = manifest_df["split"] == "test"
    manifest_df.loc[target, "role"] = "target"
    manifest_df["emotion"] = manifest_df["emotion"].astype(object)
    manifest_df.loc[target, "emotion"] = None
    manifest_df.loc[target, "label"] = "other"
    res = run_gate(synth_params, manifest_df, tmp_path)
    assert res.passed, res.summary["failures"]
    report = json.loads(res.report_json.read_text())
    assert set(report["class_counts"]) == {"train", "val"}


def test_decode_check_can_be_switched_off(synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path) -> None:
    synth_params.validation.check_decode = False
    _truncated_file(manifest_df, tmp_path)
    res = run_gate(synth_params, manifest_df, tmp_path)
    assert res.passed
    assert "audio_decodes" not in checks(res)
    assert res.summary["audio"]["decoded"] == 0


def test_report_lists_at_most_report_examples_rows(synth_params: Params, manifest_df: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    synth_params.validation.report_examples = 3
    manifest_df["emotion"] = "bored"
    res = run_gate(synth_params, manifest_df, tmp_path)
    c = checks(res)["emotion_in_classes"]
    assert c["unexpected_count"] == len(manifest_df)
    assert len(c["examples"]) == 3
    assert f"First 3 of {len(manifest_df)} offending rows" in res.report_md.read_text()


def test_cli_exits_1_when_the_gate_fails(synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path) -> None:
    from affectflow.cli import main

    params_file = tmp_path / "params.yaml"
    (params_file).write_text(params_yaml(synth_params))
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    write_manifest(manifest_df, good)
    _bad_label(manifest_df, tmp_path)
    write_manifest(manifest_df, bad)
    argv = ["validate", "--params", str(params_file), "--out", str(tmp_path / "v")]
    assert main([*argv, "--manifest", str(good)]) == 0
    assert main([*argv, "--manifest", str(bad)]) == 1
    assert "emotion_in_classes" in (tmp_path / "v" / "report.md").read_text()


# ----------------------------------------------------------------------------- feature failures
def write_features(root: Path, df: pd.DataFrame, params: Params, n_egemaps: int = 88,
                   edit: Callable[[str, str, np.ndarray], np.ndarray | None] | None = None,
                   stale: tuple[str, str] | None = None) -> Path:
    """A tiny fake features folder in the store layout, keyed as params would key it.

    `edit(kind, utt_id, arr)` may change or drop arrays; `stale=(kind, utt_id)` files that one
    array under another configuration's key (features left over from older params).
    """
    rng = np.random.default_rng(0)
    n_mels = params.features.logmel.n_mels
    keys = feature_keys(params)
    rows = []
    for utt, sha in zip(df["utt_id"], df["sha256"], strict=True):
        for kind, arr in (("logmel", rng.normal(size=(n_mels, 20))), ("egemaps", rng.normal(size=n_egemaps))):
            if edit is not None:
                arr = edit(kind, utt, arr)
                if arr is None:
                    continue
            key = "0ld" + keys[kind][3:] if (kind, utt) == stale else keys[kind]
            path = feature_path(root, kind, key, sha)
            save_array(path, arr)
            rows.append({"utt_id": utt, "kind": kind, "key": key, "file": str(path.relative_to(root)),
                         "shape": list(arr.shape)})
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_parquet(root / INDEX, index=False)
    return root


def _nan(kind: str, utt: str, arr: np.ndarray, target: str) -> np.ndarray:
    if kind == "logmel" and utt == target:
        arr[3, 4] = np.nan
    return arr


def _wrong_n_mels(kind: str, utt: str, arr: np.ndarray, target: str) -> np.ndarray:
    return arr[:40] if kind == "logmel" and utt == target else arr


def _missing_egemaps(kind: str, utt: str, arr: np.ndarray, target: str) -> np.ndarray | None:
    return None if kind == "egemaps" and utt == target else arr


def _empty_frames(kind: str, utt: str, arr: np.ndarray, target: str) -> np.ndarray:
    return arr[:, :0] if kind == "logmel" and utt == target else arr


FEATURE_CASES = {
    "NaN in logmel": (_nan, "logmel:finite"),
    "wrong n_mels": (_wrong_n_mels, "logmel:dim0"),
    "missing egemaps for a clip": (_missing_egemaps, "egemaps:present"),
    "zero frames": (_empty_frames, "logmel:frames"),
}
CHECK_OF = {**{case: check for case, (_, check) in FEATURE_CASES.items()}, "logmel file gone": "logmel:loads",
            "stale logmel key": "logmel:current_params"}


@pytest.fixture
def broken_features_gate(synth_params: Params, manifest_df: pd.DataFrame, tmp_path: Path,
                         _module_cache: dict) -> tuple[GateResult, dict[str, str]]:
    """One gate run on a features folder with each FEATURE_CASES fault in a different clip."""
    if "broken_features" not in _module_cache:
        targets = dict(zip(FEATURE_CASES, manifest_df["utt_id"].iloc[10:], strict=False))

        def edit(kind: str, utt: str, arr: np.ndarray) -> np.ndarray | None:
            for case, (fault, _) in FEATURE_CASES.items():
                arr = fault(kind, utt, arr, targets[case])
                if arr is None:
                    return None
            return arr

        targets["stale logmel key"] = manifest_df["utt_id"].iloc[30]
        feats = write_features(tmp_path / "features", manifest_df, synth_params, edit=edit,
                               stale=("logmel", targets["stale logmel key"]))
        index = pd.read_parquet(feats / INDEX)
        gone = index[(index["kind"] == "logmel") & (index["utt_id"] == manifest_df["utt_id"].iloc[20])]
        (feats / gone["file"].iloc[0]).unlink()  # listed in the index, but the file is gone
        targets["logmel file gone"] = gone["utt_id"].iloc[0]
        _module_cache["broken_features"] = (run_gate(synth_params, manifest_df, tmp_path, features=feats), targets)
    return _module_cache["broken_features"]


def test_broken_features_fail_exactly_the_broken_checks(broken_features_gate: tuple[GateResult, dict]) -> None:
    res, _ = broken_features_gate
    assert failed(res) == set(CHECK_OF.values())


@pytest.mark.parametrize("case", list(CHECK_OF))
def test_each_feature_failure_names_its_clip(case: str, broken_features_gate: tuple[GateResult, dict]) -> None:
    res, targets = broken_features_gate
    c = checks(res)[CHECK_OF[case]]
    assert c["unexpected_count"] == 1
    assert [e["utt_id"] for e in c["examples"]] == [targets[case]]
    assert targets[case] in res.report_md.read_text()


def test_load_error_says_why(broken_features_gate: tuple[GateResult, dict]) -> None:
    res, targets = broken_features_gate
    (ex,) = checks(res)["logmel:loads"]["examples"]
    assert ex["utt_id"] == targets["logmel file gone"] and "No such file" in ex["load_error"]
