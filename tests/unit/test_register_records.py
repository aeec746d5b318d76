"""The register tail's records (`affectflow.stages.register.result`): `Registration` and `Promotion`
share `VersionRecord` (name, version, gate, champion before and after, aliases) and round-trip
through their JSON."""

from __future__ import annotations

import json

import pytest

from affectflow.stages.register.result import Promotion, Registration, VersionRecord
from affectflow.tracking.gate import GateDecision, Scores


def test_the_register_tails_records_share_the_versions_fields_and_round_trip() -> None:
    gate = GateDecision(True, "gate passed", champion_version="1", test_manifest_hash="h", challenger_uar=0.6)
    reg = Registration(model_name="ser", version="2", model_uri="models:/ser/2", gate=gate,
                       metrics=Scores(uar=0.6, per_class_recall={"a": 0.6}, test_manifest_hash="h"),
                       champion="1", previous_champion="1", aliases=["challenger"])
    data = json.loads(json.dumps(reg.to_json()))
    assert data["gate"]["passed"] is True and data["aliases"] == ["challenger"] and data["model_uri"] == "models:/ser/2"
    assert Registration.from_json(data, "result.json") == reg
    promo = Promotion.of({"model_name": "ser", "version": "2", "gate": data["gate"], "promoted": True,
                          "champion": "2", "previous_champion": "1", "aliases": ["champion"], "unrelated": 1})
    shared = {f: data[f] for f in VersionRecord.__dataclass_fields__ if f not in ("champion", "aliases")}
    assert {f: promo.to_json()[f] for f in shared} == shared  # the same version, gate and earlier champion
    assert promo.to_json()["promoted"] and promo.champion == "2" and "unrelated" not in promo.to_json()
    with pytest.raises(ValueError, match=r"result\.json: not a registration result"):
        Registration.from_json({k: v for k, v in data.items() if k != "model_uri"}, "result.json")
