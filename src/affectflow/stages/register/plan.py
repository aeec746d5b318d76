"""The re-score folder's format: one writer (the rescore step), one reader (the register step).

    plan.json            `RescorePlan`: whether the champion was re-scored, on which set, and why
    champion/            evaluate's output for the champion on the comparison set
    challenger/          evaluate's output for the challenger, when that set is smaller than its test split
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from affectflow.contracts.json_file import read_json_file

PLAN_FILE = "plan.json"
CHAMPION_SCORES = "champion"
"""Sub-folder: evaluate's output for the champion on the comparison test set."""
CHALLENGER_SCORES = "challenger"
"""Sub-folder: evaluate's output for the challenger, when the comparison set is smaller than its
test split (test speakers the champion trained on are left out)."""

@dataclass(frozen=True)
class RescorePlan:
    """What the re-score decided and did (its plan.json)."""

    needed: bool
    reason: str
    champion_version: str | None = None
    champion_content_hash: str | None = None
    challenger_test_manifest_hash: str | None = None
    comparison_test_manifest_hash: str | None = None
    excluded_speakers: tuple[str, ...] = ()
    challenger_rescored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "excluded_speakers": list(self.excluded_speakers)}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> RescorePlan:
        try:
            return cls(**{**data, "excluded_speakers": tuple(data.get("excluded_speakers", ()))})
        except (TypeError, AttributeError) as e:
            raise ValueError(f"{where}: not a re-score plan ({e})") from None


def read_plan(folder: str | Path) -> RescorePlan | None:
    """plan.json of a re-score folder; None when the folder holds none (a placeholder)."""
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        return None
    return RescorePlan.from_json(read_json_file(path, ValueError, "no re-score plan"), path)
