"""The register tail's results, typed: `Registration` (register's result.json, read by promote
and by the Kubeflow report) and `Promotion` (promote's result.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affectflow.contracts.json_file import read_json_file
from affectflow.contracts.workdir import RESULT_FILE
from affectflow.stages.register.plan import RescorePlan
from affectflow.tracking.gate import GateDecision, Scores
from affectflow.tracking.guard import GuardDecision


@dataclass(frozen=True)
class Comparison:
    """The one test set the gate compares challenger and champion on, after a re-score."""

    test_manifest_hash: str
    champion_version: str
    excluded_speakers: tuple[str, ...] = ()
    challenger_rescored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "excluded_speakers": list(self.excluded_speakers)}


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    """What each record of the register tail says of the version it acted on: its name and number,
    the gate's decision, and the champion and aliases after it acted."""

    model_name: str
    version: str
    gate: GateDecision
    champion: str | None = None
    previous_champion: str | None = None
    aliases: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "gate": asdict(self.gate)}


@dataclass(frozen=True, kw_only=True)
class Registration(VersionRecord):
    """What register did: the version, where it came from, the gate's decision and its inputs."""

    model_uri: str
    metrics: Scores
    """The challenger's own test-set scores (from its evaluation)."""
    already_registered: bool = False
    note: str | None = None
    source: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    model_content_hash: str = ""
    data_version: str | None = None
    registered_at: str = ""
    comparison: Comparison | None = None
    rescore: RescorePlan | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = ""
    model_card: str | None = None
    model_card_missing: str | None = None
    guard: GuardDecision | None = None
    """The generalization guard's decision and per-corpus table (`registry.guard_corpora`; None: off,
    or the gate refused before reaching it)."""

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["metrics"] = {k: v for k, v in asdict(self.metrics).items() if v is not None}
        out["comparison"] = None if self.comparison is None else self.comparison.to_json()
        out["rescore"] = None if self.rescore is None else self.rescore.to_json()
        out["guard"] = None if self.guard is None else self.guard.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> Registration:
        try:
            d = dict(data)
            d["gate"] = GateDecision.from_json(d["gate"])
            d["metrics"] = Scores(**d["metrics"])
            if d.get("comparison") is not None:
                c = d["comparison"]
                d["comparison"] = Comparison(**{**c, "excluded_speakers": tuple(c.get("excluded_speakers", ()))})
            if d.get("rescore") is not None:
                d["rescore"] = RescorePlan.from_json(d["rescore"], where)
            if d.get("guard") is not None:
                d["guard"] = GuardDecision.from_json(d["guard"])
            return cls(**d)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{where}: not a registration result ({e})") from None


def read_registration(folder: str | Path) -> Registration:
    """register's result.json, given its folder or the file; errors name the file."""
    path = Path(folder)
    path = path / RESULT_FILE if path.is_dir() else path
    data = read_json_file(path, ValueError, "no registration (run `affectflow register`)")
    return Registration.from_json(data, path)


@dataclass(frozen=True, kw_only=True)
class Promotion(VersionRecord):
    """What promote did: the gate on promotion, whether `champion` moved, the champion after."""

    promoted: bool
    forced: bool = False
    event: dict[str, Any] | None = None

    @classmethod
    def of(cls, outcome: dict[str, Any]) -> Promotion:
        """From `Registry.promote`'s outcome."""
        return cls(**{**{k: outcome[k] for k in cls.__dataclass_fields__ if k in outcome},
                      "gate": GateDecision.from_json(outcome["gate"])})
