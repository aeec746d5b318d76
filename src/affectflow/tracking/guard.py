"""The generalization guard of promotion: a challenger that beats the champion on the pooled test
set can still lose a corpus (a deployment's recording condition); with `registry.guard_corpora`
it is refused when its UAR on any named corpus falls more than `registry.guard_margin` below the
champion's on the same clips.

`generalization_guard` is the rule, a pure function (two per-corpus score tables in, decision and
table out); `corpus_scores` reads a table from an evaluation (`test.per_corpus`). The register tail
runs it as an extra check of the promotion gate (`stages/register/guard.py` picks the two
evaluations: the re-score's pair when the champion was re-scored on this run's test set, else the
challenger's evaluation and the champion's own when both name the same test manifest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affectflow.contracts.evaluation import EvaluationError, evaluation_file, read_evaluation

UAR_TOLERANCE = 1e-9


@dataclass(frozen=True)
class GuardRow:
    corpus: str
    challenger_uar: float | None
    champion_uar: float | None
    delta: float | None
    passed: bool


@dataclass(frozen=True)
class GuardDecision:
    passed: bool
    reason: str
    margin: float
    rows: list[GuardRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GuardDecision:
        """As written by `to_json` (register's result.json `guard`)."""
        return cls(bool(data["passed"]), str(data["reason"]), float(data["margin"]),
                   [GuardRow(**r) for r in data.get("rows", [])])

    def markdown(self) -> str:
        """The guard table for the register report."""
        def cell(x: float | None) -> str:
            return "—" if x is None else f"{x:.4f}"

        head = (f"**Generalization guard: {'passed' if self.passed else 'refused'}** ({self.reason})\n\n"
                f"| corpus | challenger UAR | champion UAR | Δ | within margin {self.margin:.3f} |\n|---|---|---|---|---|\n")
        return head + "".join(f"| {r.corpus} | {cell(r.challenger_uar)} | {cell(r.champion_uar)} | "
                              f"{'—' if r.delta is None else f'{r.delta:+.4f}'} | {'yes' if r.passed else '**no**'} |\n"
                              for r in self.rows)


def generalization_guard(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
                         corpora: Sequence[str], margin: float) -> GuardDecision:
    """Refuse when the challenger's UAR on a named corpus is below the champion's minus `margin`,
    or when either table lacks a named corpus (the guard cannot be checked: never a silent pass).
    No corpora: the guard is off. No champion: nothing to lose."""
    if not corpora:
        return GuardDecision(True, "registry.guard_corpora is empty: guard off", margin)
    if champion is None:
        rows = [GuardRow(c, challenger.get(c), None, None, True) for c in corpora]
        return GuardDecision(True, "no champion scores to compare with", margin, rows)
    rows, lost, missing = [], [], []
    for c in corpora:
        new, old = challenger.get(c), champion.get(c)
        if new is None or old is None:
            missing.append(c)
            rows.append(GuardRow(c, new, old, None, False))
            continue
        ok = new + UAR_TOLERANCE >= old - margin
        rows.append(GuardRow(c, new, old, new - old, ok))
        if not ok:
            lost.append(f"{c} {new:.4f} < {old:.4f} - {margin:.3f}")
    if missing:
        return GuardDecision(False, f"generalization guard: no per-corpus UAR of both models on {', '.join(missing)} "
                                    "(is the corpus in the test split?)", margin, rows)
    if lost:
        return GuardDecision(False, f"generalization guard: the challenger loses more than the margin on {'; '.join(lost)}",
                             margin, rows)
    return GuardDecision(True, f"within {margin:.3f} UAR of the champion on every guarded corpus", margin, rows)


def corpus_scores(metrics_path: str | Path) -> dict[str, float]:
    """{corpus: UAR} of an evaluation's test set (`test.per_corpus`, read through its contract);
    errors name the file and the field."""
    path = evaluation_file(metrics_path)
    table = read_evaluation(path).test.per_corpus
    if not table:
        raise EvaluationError(f"{path}: field 'test.per_corpus' missing: the guard needs per-corpus UAR")
    return {str(corpus): float(row.uar) for corpus, row in table.items()}
