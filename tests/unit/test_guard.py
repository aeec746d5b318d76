"""The generalization guard of promotion (`affectflow.tracking.guard`, `registry.guard_corpora`): a
challenger better on the pooled test set is refused when it loses more than the margin on a named
corpus; the register result and report show the guard table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_registry import params, store, write_candidate  # noqa: F401 (fixtures)

from affectflow.orchestration.kfp_io import registry_markdown
from affectflow.tracking.guard import corpus_scores, generalization_guard
from affectflow.tracking.registry import register


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
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"per_corpus": {"emodb": {"n": 10, "uar": 0.5}}}))
    assert corpus_scores(good) == {"emodb": 0.5}
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"uar": 0.5}))
    with pytest.raises(ValueError, match=r"b.json: field 'per_corpus' missing"):
        corpus_scores(bad)


def _with_corpora(metrics: Path, per_corpus: dict[str, float]) -> None:
    data = json.loads(metrics.read_text())
    data["per_corpus"] = {c: {"n": 50, "uar": u} for c, u in per_corpus.items()}
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
    fair_dir, fair_metrics = write_candidate(tmp_path, store, "fair", 0.58)
    _with_corpora(fair_metrics, {"emodb": 0.595, "tess": 0.61})  # within the margin everywhere
    assert register(params, fair_dir, fair_metrics, tmp_path / "r2")["promoted"]
