"""Stage 1b — the data gate: Great Expectations checks on the manifest (and the features) before training.

Why a gate: a wrong label, a leaked speaker or a NaN feature does not crash training; it quietly
yields a model that looks better or worse than it is. Each check is a GX expectation on a pandas
table built here — the manifest plus derived per-row facts ("file exists", "how many splits this
speaker is in"), a per-(split, class) count table of the labelled (role=source) clips, and one table
per feature kind — so a failure names the expectation and the rows that broke it. The report
(`report.md` for people, `report.json` for machines) is written whether the gate passes or not.

Modules: `stage` (the gate: tables in, report out), `tables` (the tables and their expectations),
`gx` (running them with Great Expectations), `report` (report.md).
"""

from __future__ import annotations

from affectflow.stages.validate.stage import GateResult, run, validate

__all__ = ["GateResult", "run", "validate"]
