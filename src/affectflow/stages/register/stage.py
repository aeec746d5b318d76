"""Stage — register (the register tail's second step): the trained model becomes a registry version
(`challenger`), gated against `champion` on one test set; promotion is the next row's.

The evaluation must name the model it scored (metrics.json `model`, `contracts.evaluation`); an
identical model (same content hash) is never registered twice: the existing version is gated
again. A re-score folder (the `rescore` row's output) is recorded on the versions first, after
checking that each of its evaluations is of the model it is recorded for, and the gate then
compares on that set. Writes `result.json` (`Registration`) and `model_card.md`. A failed gate is
a normal outcome, not an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.evaluation import (
    EvaluationMismatch,
    ScoredModel,
    check_evaluation,
    evaluation_file,
    read_evaluation,
)
from affectflow.contracts.workdir import RESULT_FILE
from affectflow.stages.register.guard import GUARD_REPORT, guard_checks
from affectflow.stages.register.plan import CHALLENGER_SCORES, CHAMPION_SCORES, RescorePlan, read_plan
from affectflow.stages.register.result import Comparison, Registration
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_write_json, atomic_write_text
from affectflow.tracking import dimensions as dimension_tags
from affectflow.tracking.gate import GateDecision, Scores
from affectflow.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    CONTENT_HASH_TAG,
    DATA_VERSION_TAG,
    Registry,
    RegistryError,
    lineage,
    resolve_source,
    utc_now,
)
from affectflow.tracking.uri import resolve_uri


def _scored(path: Path, expected: ScoredModel, what: str) -> Scores:
    """The test scores of evaluation `path`, after checking it is an evaluation of `expected`."""
    ev = read_evaluation(path)
    if not expected.content_hash or not ev.model.matches(expected):
        raise EvaluationMismatch(f"{path} is an evaluation of {ev.model.describe()}, but {what} is "
                                 f"{expected.describe()}: the gate refuses to compare with another model's "
                                 "scores; re-run the re-score")
    return Scores.of(ev)


def record_rescore(reg: Registry, folder: str | Path, version: str, identity: ScoredModel,
                   scores: Scores) -> tuple[RescorePlan | None, Comparison | None]:
    """Record the champion's re-score (and the challenger's, on a reduced set) from a re-score
    folder on the versions; the set the gate should compare on, or None when the folder holds no
    re-score for the current champion."""
    plan = read_plan(folder)
    if plan is None or not plan.needed or not plan.champion_version:
        return plan, None
    champion = reg.alias_version(CHAMPION)
    if champion != plan.champion_version:
        return plan, None  # champion moved since the re-score: its scores are about another version
    root = Path(folder)
    tags = reg.version_tags(champion)
    registered = ScoredModel(content_hash=tags.get(CONTENT_HASH_TAG) or plan.champion_content_hash or "",
                             mlflow_run_id=reg.get(champion).run_id)
    champ_scores = _scored(evaluation_file(root / CHAMPION_SCORES), registered, f"champion v{champion}")
    if CONTENT_HASH_TAG not in tags:  # registered before content hashes: the re-score verified it
        reg.set_version_tag(champion, CONTENT_HASH_TAG, registered.content_hash)
    target = champ_scores.test_manifest_hash
    if plan.challenger_rescored:
        chal_scores = _scored(evaluation_file(root / CHALLENGER_SCORES), identity, f"the challenger v{version}")
        if chal_scores.test_manifest_hash != target:
            raise RegistryError(f"{root}: champion and challenger re-scores are on different test sets "
                                f"({target}, {chal_scores.test_manifest_hash})")
        if chal_scores.test_manifest_hash != scores.test_manifest_hash:
            reg.record_scores(version, chal_scores, reduced_from=scores.test_manifest_hash)
    elif target != scores.test_manifest_hash:
        raise RegistryError(f"{root / CHAMPION_SCORES}: champion re-scored on test manifest {target}, but the "
                            f"challenger was scored on {scores.test_manifest_hash}")
    assert target is not None
    reg.record_scores(champion, champ_scores, rescored_for=f"v{version}",
                      excluded_speakers=len(plan.excluded_speakers))
    return plan, Comparison(target, champion, plan.excluded_speakers, plan.challenger_rescored)


def register(params: Params, model_dir: str | Path, evaluation: str | Path, out_dir: str | Path, *,
             rescore: str | Path | None = None, run_id: str | None = None, model_uri: str | None = None,
             data_version: str | None = None, client: Any = None) -> Registration:
    """Register the trained model as a new `challenger` version (or find the one already registered
    for it), record the champion's re-score, gate it; write result.json and the model card."""
    reg = Registry(params, client)
    metrics = evaluation_file(evaluation)
    scored = read_evaluation(metrics)
    identity = check_evaluation(scored, metrics, model_dir)
    scores = Scores.of(scored)
    source = resolve_source(reg.client, model_dir, run_id=run_id, model_uri=model_uri)
    if identity.mlflow_run_id and source.run_id and identity.mlflow_run_id != source.run_id:
        raise EvaluationMismatch(f"{model_dir} was logged by MLflow run {identity.mlflow_run_id}, but the model to "
                                 f"register ({source.model_uri}) belongs to run {source.run_id}")
    lin = lineage(reg.client, source, model_dir, scores)
    at = utc_now()
    previous = reg.alias_version(CHAMPION)
    existing = reg.find_by_content(identity.content_hash)
    note = None
    if existing is None:
        tags = {**lin, **scores.to_tags(), **dimension_tags.version_tags(scored.dimensions),
                CONTENT_HASH_TAG: identity.content_hash, "registered_at": at,
                "model_dir": str(Path(model_dir).resolve()), "metrics_path": str(metrics.resolve())}
        if data_version:
            tags[DATA_VERSION_TAG] = data_version
        version = reg.create_version(source, tags)
    else:
        version = existing
        note = f"already registered as v{version} (same model content {identity.content_hash[:12]}); no new version"
    plan, comparison = (record_rescore(reg, rescore, version, identity, scores) if rescore is not None
                        else (None, None))
    checks = guard_checks(params, reg, metrics, rescore if comparison is not None else None)  # registry.guard_corpora
    if existing is not None and existing == previous:
        decision = GateDecision(False, f"{note}: v{version} is the champion", previous)
    else:
        decision = reg.gate(version, on=comparison.test_manifest_hash if comparison else None,
                            rescored=comparison is not None, extra_checks=checks)
    guard = checks[0].decision if checks else None
    if existing is not None and existing != previous:
        reg.client.set_registered_model_alias(reg.name, CHALLENGER, version)
    aliases = reg.aliases()
    # imported here: the model card reads the corpora tables, which registry reads do not need
    from affectflow.tracking.model_card import publish_card

    card, why = publish_card(reg.client, reg.name, version, model_dir, scored, out_dir, source.run_id,
                             asdict(decision))
    result = Registration(
        model_name=reg.name, version=version, model_uri=f"models:/{reg.name}/{version}",
        already_registered=existing is not None, note=note, source=source.model_uri, run_id=source.run_id,
        model_id=source.model_id, model_content_hash=identity.content_hash, data_version=data_version,
        aliases=sorted(a for a, v in aliases.items() if v == version), champion=aliases.get(CHAMPION),
        previous_champion=previous, gate=decision, registered_at=at, comparison=comparison, rescore=plan,
        metrics=scores, lineage=lin, tracking_uri=resolve_uri(params.tracking.uri),
        model_card=None if card is None else str(card), model_card_missing=why, guard=guard)
    if guard is not None:
        atomic_write_text(Path(out_dir) / GUARD_REPORT, guard.markdown())
    atomic_write_json(Path(out_dir) / RESULT_FILE, result.to_json())
    return result


@dataclass
class RegisterResult:
    out_dir: Path
    registration: Registration

    @property
    def summary(self) -> dict[str, Any]:
        return self.registration.to_json()


def run(params: Params, inputs: Inputs, out_dir: Path, *, run_id: str | None = None, model_uri: str | None = None,
        data_version: str | None = None) -> RegisterResult:
    return RegisterResult(Path(out_dir), register(
        params, inputs["model"], inputs["evaluation"], out_dir, rescore=inputs.get("rescore"), run_id=run_id,
        model_uri=model_uri, data_version=data_version))
