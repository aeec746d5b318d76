"""The stages' result types share their shape (`affectflow.stages.spec.StageOutput` /
`ReportedOutput`): the folder and summary once, each stage naming its own artifact inside it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from affectflow.contracts.workdir import MANIFEST_FILE
from affectflow.stages.augment.stage import AugmentResult
from affectflow.stages.features.stage import FeaturesResult
from affectflow.stages.ingest import IngestResult
from affectflow.stages.pretrain.stage import PretrainResult
from affectflow.stages.spec import REPORT_JSON, REPORT_MD, ReportedOutput, StageOutput


def test_ingest_and_features_name_their_file_inside_the_folder(tmp_path: Path) -> None:
    ing = IngestResult(tmp_path / "ingest", {"n": 3})
    assert ing.manifest == tmp_path / "ingest" / MANIFEST_FILE and ing.summary == {"n": 3}
    feats = FeaturesResult(tmp_path / "features", {})
    assert feats.index.parent == feats.out_dir and feats.index.name == "index.parquet"
    assert isinstance(ing, StageOutput) and isinstance(feats, StageOutput)


def test_augment_and_pretrain_carry_their_artifact_beside_the_shared_report(tmp_path: Path) -> None:
    aug = AugmentResult(tmp_path / "a", {"kept": 4}, synthetic=tmp_path / "a" / "synthetic.npz", mlflow_run_id="r")
    pre = PretrainResult(tmp_path / "p", encoder_dir=tmp_path / "p" / "encoder")
    assert (aug.report_json, aug.report_md) == (tmp_path / "a" / REPORT_JSON, tmp_path / "a" / REPORT_MD)
    assert pre.report_md == tmp_path / "p" / REPORT_MD and pre.summary == {} and pre.mlflow_run_id is None
    assert isinstance(aug, ReportedOutput) and aug.synthetic.name == "synthetic.npz" and aug.mlflow_run_id == "r"
    assert {f.name for f in fields(PretrainResult)} == {"out_dir", "summary", "mlflow_run_id", "encoder_dir"}
    with pytest.raises(TypeError):  # the artifact is named, never taken by position
        AugmentResult(tmp_path, {}, tmp_path / "synthetic.npz")  # type: ignore[misc]
    with pytest.raises(TypeError):
        PretrainResult(tmp_path)  # type: ignore[call-arg]  # no encoder: not a pretrain result

