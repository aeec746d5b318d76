"""`affectflow register` with a stale champion: it re-scores the champion on the challenger's test
manifest with the evaluate stage's code (fetched back from its MLflow run), or says what to run.

The champion is the tiny trained model of recognizer_support, registered as if it had been scored
on an older test manifest; the challenger is the same network with perturbed weights (another
model: its own content hash), evaluated on today's manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recognizer_support import trained
from register_support import register

from affectflow.cli import main
from affectflow.contracts.model_folder import content_hash
from affectflow.tracking.registry import CHAMPION, SCORE_ON_PREFIX, Registry

pytestmark = pytest.mark.slow


def test_register_rescores_a_stale_champion_or_says_what_to_run(synth_root: Path, tmp_path: Path,
                                                                tmp_path_factory: pytest.TempPathFactory,
                                                                capsys: pytest.CaptureFixture) -> None:
    import torch

    t = trained(synth_root, tmp_path_factory)
    params = t["params"].model_copy(deep=True)
    params.registry.model_name = "rescore-cli"
    champ_dir = t["result"].model_dir
    # The champion, scored on an older test manifest (before the corpus grew).
    old = {**t["metrics"], "test": {**t["metrics"]["test"], "test_manifest_hash": "older-test-set"}}
    old_metrics = tmp_path / "old" / "metrics.json"
    old_metrics.parent.mkdir()
    old_metrics.write_text(json.dumps(old))
    assert register(params, champ_dir, old_metrics, tmp_path / "r1")["champion"] == "1"

    chal_dir = Path(shutil.copytree(champ_dir, tmp_path / "challenger" / "model"))
    state = torch.load(chal_dir / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
               chal_dir / "model.pt")
    cfg = ["--params", str(t["base"] / "params.yaml"), "--set", "registry.model_name=rescore-cli"]
    io = ["--manifest", str(t["manifest"]), "--features", str(t["features"])]
    assert main(["evaluate", *cfg, *io, "--model", str(chal_dir), "--out", str(tmp_path / "challenger" / "eval")]) == 0
    chal_metrics = tmp_path / "challenger" / "eval" / "metrics.json"
    test_hash = json.loads(chal_metrics.read_text())["test"]["test_manifest_hash"]

    # Without the data at hand: registered, not promoted, and the command to run is printed.
    assert main(["register", *cfg, "--model", str(chal_dir), "--metrics", str(chal_metrics),
                 "--manifest", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "r2")]) == 0
    err = capsys.readouterr().err
    assert f"affectflow register --model {chal_dir} --metrics {chal_metrics} --manifest" in err
    stale = json.loads((tmp_path / "r2" / "result.json").read_text())
    assert stale["version"] == "2" and not json.loads((tmp_path / "r2" / "promote" / "result.json").read_text())["promoted"]
    assert "was not scored on this test set" in stale["gate"]["reason"]

    # With it: the champion is fetched from its run, re-scored with the same code on the same rows
    # (so it scores exactly what its own evaluation said), and the gate compares on that set.
    assert main(["register", *cfg, "--model", str(chal_dir), "--metrics", str(chal_metrics), *io,
                 "--out", str(tmp_path / "r3")]) == 0
    res = json.loads((tmp_path / "r3" / "result.json").read_text())
    assert res["version"] == "2" and res["already_registered"] and res["rescore"]["needed"]
    gate = res["gate"]
    assert gate["rescored"] and gate["test_manifest_hash"] == test_hash and gate["champion_version"] == "1"
    assert gate["champion_uar"] == pytest.approx(t["metrics"]["test"]["uar"])
    reg = Registry(params)
    recorded = json.loads(reg.version_tags("1")[SCORE_ON_PREFIX + test_hash])
    assert recorded["uar"] == pytest.approx(t["metrics"]["test"]["uar"]) and recorded["rescored_for"] == "v2"
    fetched = tmp_path / "r3" / "rescore" / "champion_model"
    assert content_hash(next(p.parent for p in fetched.rglob("model.json"))) == content_hash(champ_dir)
    assert reg.alias_version(CHAMPION) == ("2" if gate["passed"] else "1")
