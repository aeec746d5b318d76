"""The promotion gate: two score sets in, a decision out; no MLflow, no files.

`evaluate_gate(challenger, champion, ...)` says whether the challenger may take `champion`: both
must be scored on one test set (the challenger's test manifest; the register tail re-scores a
champion scored on another), no class recall may be below `registry.min_class_recall`, and the
challenger's UAR must beat the champion's by `registry.min_uar_gain`. Further rules plug in as
`GateCheck`s (`extra_checks`): each sees both score sets and answers a refusal reason or None, and
runs after the built-in rules pass (a generalization guard re-scoring the challenger per corpus
is one). The registry (`affectflow.tracking.registry`) reads and records the scores as version
tags; the register stage composes the two.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from affectflow.contracts.evaluation import Evaluation

UNKNOWN = "unknown"
RECALL_TAG = "per_class_recall"
TEST_HASH_TAG = "test_manifest_hash"
UAR_TOLERANCE = 1e-9
"""Float slack when comparing UAR with champion UAR + margin, so an exact-margin gain passes."""


class ScoresError(ValueError):
    """Scores recorded somewhere that cannot be read back; the message names where."""


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def _short(h: str | None) -> str:
    return (h or UNKNOWN)[:12]


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Scores:
    """What the gate compares: one model's test-set scores and which test set they came from."""

    uar: float
    wa: float | None = None
    macro_f1: float | None = None
    per_class_recall: dict[str, float] = field(default_factory=dict)
    test_manifest_hash: str | None = None

    @classmethod
    def of(cls, evaluation: Evaluation) -> Scores:
        """The test set's scores of an evaluation (classes absent from the set left out)."""
        t = evaluation.test
        return cls(t.uar, t.wa, t.macro_f1, t.recalls(), t.test_manifest_hash)

    def to_tags(self) -> dict[str, str]:
        """As model-version tags (the registry's record of a version's own evaluation)."""
        tags = {"uar": _fmt(self.uar), TEST_HASH_TAG: self.test_manifest_hash or UNKNOWN,
                RECALL_TAG: json.dumps(self.per_class_recall, sort_keys=True)}
        for key in ("wa", "macro_f1"):
            value = getattr(self, key)
            if value is not None:
                tags[key] = _fmt(value)
        return tags

    def to_record(self, **extra: Any) -> str:
        """One compact JSON value (a `score_on.<hash>` tag: scores on another test set)."""
        body = {k: v for k, v in asdict(self).items() if v is not None and k != TEST_HASH_TAG}
        return _compact({**body, **extra})

    @classmethod
    def from_record(cls, text: str, test_hash: str, where: str) -> Scores:
        try:
            d = json.loads(text)
            return cls(uar=float(d["uar"]), wa=None if d.get("wa") is None else float(d["wa"]),
                       macro_f1=None if d.get("macro_f1") is None else float(d["macro_f1"]),
                       per_class_recall={str(k): float(v) for k, v in d.get("per_class_recall", {}).items()},
                       test_manifest_hash=test_hash)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ScoresError(f"{where}: unreadable score record ({e})") from None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], where: str) -> Scores:
        """Scores recorded on a model version (`where` names it in errors)."""
        if "uar" not in tags:
            raise ScoresError(f"{where}: tag 'uar' missing (was it registered by affectflow?)")
        try:
            recall = json.loads(tags.get(RECALL_TAG, "{}"))
            return cls(
                uar=float(tags["uar"]),
                wa=float(tags["wa"]) if "wa" in tags else None,
                macro_f1=float(tags["macro_f1"]) if "macro_f1" in tags else None,
                per_class_recall={str(k): float(v) for k, v in recall.items()},
                test_manifest_hash=None if tags.get(TEST_HASH_TAG, UNKNOWN) == UNKNOWN else tags[TEST_HASH_TAG],
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ScoresError(f"{where}: unreadable score tags ({e})") from None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    champion_version: str | None = None
    """The version the challenger was compared with (None: no champion yet)."""
    test_manifest_hash: str | None = None
    """The one test set both were scored on."""
    challenger_uar: float | None = None
    champion_uar: float | None = None
    rescored: bool = False
    """The champion's score on that set comes from a re-score (not its own evaluation)."""

    def to_tags(self) -> dict[str, str]:
        """The decision as model-version tags."""
        out = {"gate": "passed" if self.passed else "failed", "gate_reason": self.reason,
               "gate_champion": self.champion_version or "none",
               "gate_test_manifest_hash": self.test_manifest_hash or UNKNOWN}
        for key, value in (("gate_uar", self.challenger_uar), ("gate_champion_uar", self.champion_uar)):
            if value is not None:
                out[key] = _fmt(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateDecision:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


GateCheck = Callable[[Scores, "Scores | None"], "str | None"]
"""An extra promotion rule: (challenger, champion or None) -> None to pass, else the reason it
refuses (written as `not promoted (<reason>)`)."""


def evaluate_gate(challenger: Scores, champion: Scores | None, *, min_uar_gain: float,
                  min_class_recall: float, champion_version: str | None = None,
                  rescored: bool = False, extra_checks: Sequence[GateCheck] = ()) -> GateDecision:
    """The promotion rule, free of MLflow so it can be reasoned about and tested on its own."""
    def refuse(reason: str) -> GateDecision:
        return GateDecision(False, reason, champion_version, challenger.test_manifest_hash, challenger.uar,
                            champion.uar if champion else None, rescored)

    if not challenger.test_manifest_hash:
        return refuse("not promoted (challenger has no test_manifest_hash): cannot tell which test set it "
                      "was scored on")
    if min_class_recall > 0 and not challenger.per_class_recall:
        return refuse(f"not promoted (no per_class_recall): the recall floor {min_class_recall:.3f} cannot "
                      "be checked")
    low = {c: r for c, r in sorted(challenger.per_class_recall.items()) if r < min_class_recall}
    if low:
        listed = ", ".join(f"{c}={r:.3f}" for c, r in low.items())
        return refuse(f"not promoted (class recall below floor {min_class_recall:.3f}: {listed})")
    if champion is None:
        decision = GateDecision(True, f"no champion yet; UAR {challenger.uar:.4f} and every class recall "
                                      f">= {min_class_recall:.3f}", None, challenger.test_manifest_hash,
                                challenger.uar)
        return _extra(decision, challenger, champion, extra_checks, refuse)
    v = champion_version
    if champion.test_manifest_hash != challenger.test_manifest_hash:
        return refuse(
            f"not promoted (champion v{v} was not scored on this test set): test manifests differ "
            f"(challenger {challenger.test_manifest_hash}, champion v{v} {champion.test_manifest_hash or UNKNOWN}); "
            "re-score the champion on the challenger's test manifest (the pipeline's rescore task, "
            "or `affectflow register ... --manifest <manifest.parquet> --features <store>`) or promote with --force")
    needed = champion.uar + min_uar_gain
    where = f"test manifest {_short(challenger.test_manifest_hash)}" + (", champion re-scored" if rescored else "")
    if challenger.uar + UAR_TOLERANCE < needed:
        return refuse(f"not promoted (no improvement over champion v{v}): UAR {challenger.uar:.4f} < champion "
                      f"v{v} UAR {champion.uar:.4f} + margin {min_uar_gain:.4f} = {needed:.4f} ({where})")
    decision = GateDecision(
        True,
        f"UAR {challenger.uar:.4f} >= champion v{v} UAR {champion.uar:.4f} + margin {min_uar_gain:.4f} ({where}); "
        f"every class recall >= {min_class_recall:.3f}",
        v, challenger.test_manifest_hash, challenger.uar, champion.uar, rescored)
    return _extra(decision, challenger, champion, extra_checks, refuse)


def _extra(decision: GateDecision, challenger: Scores, champion: Scores | None, checks: Sequence[GateCheck],
           refuse: Callable[[str], GateDecision]) -> GateDecision:
    """The extra checks, in order, after the built-in rules passed: the first refusal wins."""
    for check in checks:
        reason = check(challenger, champion)
        if reason:
            return refuse(f"not promoted ({reason})")
    return decision
