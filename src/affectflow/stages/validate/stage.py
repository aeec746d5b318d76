"""The validate stage's run: build the tables, run them, write report.json and report.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before GX is imported: no usage events

import great_expectations as gx

from affectflow.config import Params
from affectflow.contracts.manifest import read_manifest
from affectflow.stages.spec import Inputs
from affectflow.stages.validate.gx import run_tables
from affectflow.stages.validate.report import _failure_line, _first_example, render_markdown
from affectflow.stages.validate.tables import (
    SPLITS,
    Table,
    class_count_table,
    class_counts,
    feature_specs,
    feature_table,
    manifest_table,
)
from affectflow.storage import atomic_write_json, atomic_write_text


@dataclass
class GateResult:
    passed: bool
    summary: dict[str, Any]
    report_md: Path
    report_json: Path

    @property
    def out_dir(self) -> Path:
        return self.report_md.parent


# ----------------------------------------------------------------------------- the stage
def validate(params: Params, manifest_path: str | Path, out_dir: str | Path,
             features_dir: str | Path | None = None) -> GateResult:
    """Run the gate; write `report.json` and `report.md` to `out_dir`.

    passed=False if any critical check fails; warning-level checks (duplicate clips that stay in one
    split with one label, unless validation.fail_on_duplicate_audio) are reported but do not block.
    """
    manifest_path, out = Path(manifest_path), Path(out_dir)
    df = read_manifest(manifest_path)
    mtable, audio_counts = manifest_table(df, params)
    counts = class_counts(df, params.ingest.classes)
    tables: list[Table] = [mtable, class_count_table(df, params)]
    if features_dir is not None:
        from affectflow.contracts.feature_store import FeatureSet

        features = FeatureSet(features_dir)
        utt_ids = df["utt_id"].dropna().astype(str).tolist()
        tables += [feature_table(features, spec, utt_ids) for spec in feature_specs(params)]
    checks = run_tables(tables, params.validation.report_examples)
    failed = [c for c in checks if c.critical_failure]
    warned = [c for c in checks if c.warning]
    summary: dict[str, Any] = {
        "passed": not failed,
        "manifest": str(manifest_path),
        "features": str(features_dir) if features_dir is not None else None,
        "clips": len(df),
        "speakers": int(df["speaker"].nunique()),
        "checks": len(checks),
        "failed": [c.check for c in failed],
        "failures": {c.check: _failure_line(c) + _first_example(c) for c in failed},
        "warnings": {c.check: _failure_line(c) + _first_example(c) for c in warned},
        "audio": audio_counts,
    }
    table = counts.pivot(index="split", columns="emotion", values="count") if len(counts) else None
    class_table = ({sp: {c: int(table.loc[sp, c]) for c in params.ingest.classes}
                    for sp in SPLITS if sp in table.index} if table is not None else {})
    report = {"summary": summary, "great_expectations": gx.__version__, "class_counts": class_table,
              "params": params.validation.model_dump(mode="json"), "checks": [c.as_json() for c in checks]}
    out.mkdir(parents=True, exist_ok=True)
    report_json, report_md = out / "report.json", out / "report.md"
    atomic_write_json(report_json, report)
    atomic_write_text(report_md, render_markdown(report, checks))
    return GateResult(passed=not failed, summary=summary, report_md=report_md, report_json=report_json)


def run(params: Params, inputs: Inputs, out_dir: Path) -> GateResult:
    return validate(params, inputs["manifest"], out_dir, features_dir=inputs.get("features"))
