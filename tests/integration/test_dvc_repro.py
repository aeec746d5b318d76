"""`dvc repro` of dvc.yaml in a throw-away git repository on generated audio.

The repository holds a copy of dvc.yaml, the code the stages depend on, a params.yaml with a
tiny configuration and a generated RAVDESS-like corpus under data/. The first repro runs every
stage; a second one must find nothing to do; `dvc exp run -S` re-runs only what the changed
parameter reaches.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate", "rescore", "register",
          "promote")
TINY = {
    "paths": {"workdir": "artifacts", "data_root": "data"},
    "ingest": {"corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
               "classes": ["neutral", "happy", "sad", "angry"], "workers": 1},
    "features": {"kinds": ["egemaps"], "workers": 1},
    "train": {"model": "egemaps_mlp", "epochs": 2, "patience": 2},
    "evaluate": {"bootstrap": 20},
    "tracking": {"uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts"},
}

pytestmark = pytest.mark.slow


def _merge(tree: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(tree.get(k), dict):
            _merge(tree[k], v)
        else:
            tree[k] = v
    return tree


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "AFFECTFLOW_PROGRESS": "0", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=900)


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"{' '.join(res.args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from affectflow.corpora.demo import make_ravdess_like

    repo = tmp_path_factory.mktemp("dvcrepo")
    make_ravdess_like(repo / "data" / "ravdess", actors=8, emotions=("neutral", "happy", "sad", "angry"),
                      clips_per_emotion=4, duration=1.2)
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src" / "affectflow", repo / "src" / "affectflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n__pycache__/\n")
    _ok(_run(["git", "init", "-q"], repo))
    _ok(_run([sys.executable, "-m", "dvc", "init", "-q"], repo))
    _ok(_run(["git", "add", "-A"], repo))
    _ok(_run(["git", "commit", "-q", "-m", "init"], repo))
    return repo


def test_repro_runs_every_stage_then_nothing(dvc_repo: Path) -> None:
    first = _ok(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo))
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, first[-3000:]
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert (dvc_repo / "artifacts" / "augment" / "SKIPPED").is_file()  # augment.enabled: false
    metrics = yaml.safe_load((dvc_repo / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["uar"] <= 1.0
    result = yaml.safe_load((dvc_repo / "artifacts" / "register" / "result.json").read_text())
    assert result["version"] == "1"
    promotion = yaml.safe_load((dvc_repo / "artifacts" / "promote" / "result.json").read_text())
    assert promotion["promoted"] and promotion["champion"] == "1"  # the tail: register, then promote

    second = _ok(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo))
    assert "Running stage" not in second, second
    status = _ok(_run([sys.executable, "-m", "dvc", "status"], dvc_repo))
    assert "up to date" in status, status

    from affectflow.tracking.revisions import dvc_revision

    rev = dvc_revision(dvc_repo)
    assert rev == f"dvc.lock:{lock['stages']['ingest']['outs'][0]['md5']}"


def test_exp_run_set_param_reruns_downstream_only(dvc_repo: Path) -> None:
    if not (dvc_repo / "dvc.lock").is_file():
        _ok(_run([sys.executable, "-m", "dvc", "repro"], dvc_repo))
    _ok(_run(["git", "add", "-A"], dvc_repo))
    _ok(_run(["git", "commit", "-q", "-m", "repro"], dvc_repo))
    out = _ok(_run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.epochs=3"], dvc_repo))
    # pretrain reads train.* (the encoder is the recognizer's), so it re-runs too (here: its placeholder)
    for stage in ("pretrain", "train", "evaluate", "rescore", "register", "promote"):
        assert f"Running stage '{stage}'" in out, out[-3000:]
    for stage in ("ingest", "validate", "features", "augment"):
        assert f"Running stage '{stage}'" not in out, out[-3000:]
    assert yaml.safe_load((dvc_repo / "params.yaml").read_text())["train"]["epochs"] == 3
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
