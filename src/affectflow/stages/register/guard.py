"""The generalization guard (`registry.guard_corpora`) as an extra check of the promotion gate.

Why here: the rule is pure (`tracking.guard`), but which two evaluations it compares is the register
tail's knowledge: the re-score folder's pair when the champion was re-scored on this run's test set
(both on the same clips), else the challenger's evaluation and the champion's own (its
`metrics_path` tag) when both name the same test manifest; otherwise there is nothing comparable
and the guard passes (the gate itself refuses scores from different test sets). The check runs
after the gate's built-in rules (`tracking.gate.evaluate_gate`'s `extra_checks`) and keeps its
decision, which register writes into its result (`Registration.guard`) and `guard.md`.
"""

from __future__ import annotations

from pathlib import Path

from affectflow.config import Params
from affectflow.contracts.evaluation import evaluation_file
from affectflow.stages.register.plan import CHALLENGER_SCORES, CHAMPION_SCORES
from affectflow.tracking.gate import TEST_HASH_TAG, Scores
from affectflow.tracking.guard import GuardDecision, corpus_scores, generalization_guard
from affectflow.tracking.registry import CHAMPION, Registry

GUARD_REPORT = "guard.md"
METRICS_PATH_TAG = "metrics_path"
"""The version tag register writes: where the version's own evaluation is."""


class GuardCheck:
    """A `GateCheck` running the guard against the current champion; `decision` holds its outcome
    (None until the gate reached it: the built-in rules refuse first)."""

    def __init__(self, params: Params, reg: Registry, challenger_metrics: str | Path,
                 rescore_dir: str | Path | None = None, recorded: GuardDecision | None = None,
                 recorded_champion: str | None = None):
        self.settings = params.registry
        self.reg = reg
        self.challenger_metrics = challenger_metrics
        self.rescore_dir = rescore_dir
        self.recorded, self.recorded_champion = recorded, recorded_champion
        """promote: register's decision, reused while `champion` is still the version it compared with."""
        self.decision: GuardDecision | None = None

    def __call__(self, challenger: Scores, champion: Scores | None) -> str | None:
        version = self.reg.alias_version(CHAMPION) if champion is not None else None
        if self.recorded is not None and version == self.recorded_champion:
            self.decision = self.recorded
        else:
            mine, theirs = self._tables(challenger, champion, version)
            self.decision = generalization_guard(mine, theirs, self.settings.guard_corpora, self.settings.guard_margin)
        return None if self.decision.passed else self.decision.reason

    def _tables(self, challenger: Scores, champion: Scores | None,
                version: str | None) -> tuple[dict[str, float], dict[str, float] | None]:
        if champion is None or version is None:
            return corpus_scores(self.challenger_metrics), None
        if self.rescore_dir is not None:  # the gate compares on the re-score's set: so does the guard
            root = Path(self.rescore_dir)
            chal = evaluation_file(root / CHALLENGER_SCORES)
            return (corpus_scores(chal if chal.is_file() else self.challenger_metrics),
                    corpus_scores(root / CHAMPION_SCORES))
        mine = corpus_scores(self.challenger_metrics)
        tags = self.reg.version_tags(version)
        theirs = tags.get(METRICS_PATH_TAG)
        if tags.get(TEST_HASH_TAG) != challenger.test_manifest_hash or not theirs or not Path(theirs).is_file():
            return mine, None  # nothing on the same clips
        return mine, corpus_scores(theirs)


def guard_checks(params: Params, reg: Registry, challenger_metrics: str | Path, rescore_dir: str | Path | None = None,
                 recorded: GuardDecision | None = None, recorded_champion: str | None = None) -> list[GuardCheck]:
    """The gate's extra checks for `registry.guard_corpora` (none when it is empty: guard off)."""
    if not params.registry.guard_corpora:
        return []
    return [GuardCheck(params, reg, challenger_metrics, rescore_dir, recorded, recorded_champion)]
