"""The data gate on the real corpora: RAVDESS (labelled source) + EmoDB (unlabelled DANN target) pass."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from base_settings import base_params

from affectflow.stages.ingest import ingest
from affectflow.stages.validate import validate

pytestmark = pytest.mark.integration


def test_gate_passes_on_ravdess_with_emodb_target(shared_data: Path, tmp_path: Path) -> None:
    params = base_params({
        "paths.workdir": str(tmp_path / "work"),
        "paths.data_root": str(shared_data),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess", "role": "source"},
                           {"name": "emodb", "adapter": "emodb", "root": "emodb", "role": "target"}],
        "ingest.workers": 2,
    })
    manifest = ingest(params, tmp_path / "ingest").manifest
    res = validate(params, manifest, tmp_path / "validation")
    assert res.passed, res.report_md.read_text()
    df = pd.read_parquet(manifest)
    assert res.summary["clips"] == len(df) == 1440 + 339
    # RAVDESS ships one byte-identical pair (Actor_07, happy, statement 2, repetitions 1 and 2): same
    # speaker, split and label, so it is a warning that names the pair, not a gate failure
    report = json.loads(res.report_json.read_text())
    assert set(res.summary["warnings"]) == {"sha256_unique"}
    (dup,) = next(c for c in report["checks"] if c["check"] == "sha256_unique")["examples"]
    assert dup["utt_ids"] == "ravdess/03-01-03-01-02-01-07, ravdess/03-01-03-01-02-02-07"
    assert res.summary["audio"]["decoded"] == len(df)  # every file opened and tail-decoded
    # class counts are over the labelled corpus only: EmoDB (target) clips are not counted
    ravdess = df[df["corpus"] == "ravdess"].groupby(["split", "emotion"]).size()
    for split, row in report["class_counts"].items():
        assert set(row) == set(params.ingest.classes)
        for emotion, n in row.items():
            assert n == ravdess.get((split, emotion), 0)
    assert sum(sum(r.values()) for r in report["class_counts"].values()) == 1440
