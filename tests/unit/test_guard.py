"""The generalization guard of promotion (`affectflow.tracking.guard`, `registry.guard_corpora`): a
challenger better on the pooled test set is refused when it loses more than the margin on a named
corpus; the register result and report show the guard table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from register_support import register
from test_registry import evaluation, params, store, write_candidate  # noqa: F401 (fixtures)

from affectflow.contracts.evaluation import EvaluationError
from affectflow.orchestration.kfp_reports import registry_markdown
from affectflow.stages.register.result import read_registration
from affectflow.tracking.guard import corpus_scores, generalization_guard


def test_the_rule() -> None:
    champ = {"emodb": 0.60, "tess": 0.50}
    ok = generalization_guard({"emodb": 0.595, "tess": 0.70}, champ, ["emodb", "tess"], 0.01)
    assert ok.passed and [r.passed for r in ok.rows] == [True, True]
    lost = generalization_guard({"emodb": 0.58, "tess": 0.90}, champ, ["emodb", "tess"], 0.01)
    assert not lost.passed and "emodb 0.5800 < 0.6000" in lost.reason and [r.passed for r in lost.rows] == [False, True]
    missing = generalization_guard({"emodb": 0.9}, champ, ["emodb", "emovo"], 0.01)
    assert not missing.passed and "emovo" in missing.reason  # cannot be checked: never a silent pass
    assert generalization_guard({}, champ, [], 0.01).passed  # off
    assert generalization_guard({"emodb": 0.1}, None, ["emodb"], 0.01).passed  # no champion: nothing to lose
    assert "| emodb | 0.5800 | 0.6000 | -0.0200 | **no** |" in lost.markdown()


def test_corpus_scores_read_the_per_corpus_breakdown(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    good = tmp_path / "m.json"
    good.write_text(json.dumps(evaluation(model, 0.5, "test-A", None)))
    _with_corpora(good, {"emodb": 0.5})
    assert corpus_scores(good) == {"emodb": 0.5}
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(evaluation(model, 0.5, "test-A", None)))  # no per-corpus breakdown
    with pytest.raises(EvaluationError, match=r"b.json: field 'test.per_corpus' missing"):
        corpus_scores(bad)


def _with_corpora(metrics: Path, per_corpus: dict[str, float]) -> None:
    data = json.loads(metrics.read_text())
    data["test"]["per_corpus"] = {c: {"n": 50, "uar": u, "wa": u, "macro_f1": u} for c, u in per_corpus.items()}
    metrics.write_text(json.dumps(data))


def test_register_refuses_a_pooled_winner_that_loses_a_guarded_corpus(params, tmp_path, store) -> None:  # noqa: F811
    params = params.model_copy(update={"registry": params.registry.model_copy(
        update={"guard_corpora": ["emodb", "tess"], "guard_margin": 0.01})})
    champ_dir, champ_metrics = write_candidate(tmp_path, store, "champ", 0.50)
    _with_corpora(champ_metrics, {"emodb": 0.60, "tess": 0.40})
    assert register(params, champ_dir, champ_metrics, tmp_path / "r0")["promoted"]
    chal_dir, chal_metrics = write_candidate(tmp_path, store, "chal", 0.58)  # +8 points pooled
    _with_corpora(chal_metrics, {"emodb": 0.55, "tess": 0.61})  # ... but 5 points worse on EmoDB
    res = register(params, chal_dir, chal_metrics, tmp_path / "r1")
    assert not res["promoted"] and not res["gate"]["passed"] and "emodb" in res["gate"]["reason"]
    assert res["guard"]["rows"][0] == {"corpus": "emodb", "challenger_uar": 0.55, "champion_uar": 0.60,
                                       "delta": pytest.approx(-0.05), "passed": False}
    assert "Generalization guard: refused" in (tmp_path / "r1" / "guard.md").read_text()
    assert "| emodb | 0.5500 | 0.6000 |" in registry_markdown("Registration", res)
    assert read_registration(tmp_path / "r1").guard.rows[0].corpus == "emodb"  # the typed result reads it back
    fair_dir, fair_metrics = write_candidate(tmp_path, store, "fair", 0.58)
    _with_corpora(fair_metrics, {"emodb": 0.595, "tess": 0.61})  # within the margin everywhere
    assert register(params, fair_dir, fair_metrics, tmp_path / "r2")["promoted"]


def test_promote_runs_the_guard_again_when_the_champion_moved(params, tmp_path, store) -> None:  # noqa: F811
    """register's guard decision holds for the champion it compared with; when `champion` moved before
    promote, promote compares with the new champion (its own evaluation, same test set)."""
    from affectflow.stages.register.promote import promote

    params = params.model_copy(update={"registry": params.registry.model_copy(
        update={"guard_corpora": ["emodb"], "guard_margin": 0.01})})
    champ_dir, champ_metrics = write_candidate(tmp_path, store, "champ", 0.50)
    _with_corpora(champ_metrics, {"emodb": 0.60})
    assert register(params, champ_dir, champ_metrics, tmp_path / "r0")["promoted"]
    held = params.model_copy(update={"registry": params.registry.model_copy(update={"auto_promote": False})})
    chal_dir, chal_metrics = write_candidate(tmp_path, store, "chal", 0.58)
    _with_corpora(chal_metrics, {"emodb": 0.595})
    res = register(held, chal_dir, chal_metrics, tmp_path / "r1")
    assert res["gate"]["passed"] and res["guard"]["passed"] and not res["promoted"]  # waits for promote
    other_dir, other_metrics = write_candidate(tmp_path, store, "other", 0.55)
    _with_corpora(other_metrics, {"emodb": 0.70})
    assert register(params, other_dir, other_metrics, tmp_path / "r2")["promoted"]  # champion moves
    outcome = promote(params, read_registration(tmp_path / "r1"), tmp_path / "r1" / "promote")
    assert not outcome.promoted and "emodb 0.5950 < 0.7000" in outcome.gate.reason
