"""What a newcomer meets: read-only commands leave nothing behind, generated demo data says so,
long stages show progress in logs, and a local pipeline run's log is readable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from affectflow.corpora.demo import MARKER, is_synthetic, make_ravdess_like, utterance


def test_predict_outside_the_repository_fails_clearly_and_leaves_no_store(tmp_path: Path) -> None:
    clip = tmp_path / "in" / "clip.wav"
    clip.parent.mkdir()
    sf.write(clip, utterance("happy", 1, 0), 16000)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run([sys.executable, "-m", "affectflow.cli", "predict", str(clip)], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2  # no params.yaml here: said, not silently the defaults
    assert run.stderr.strip().startswith(f"error: no params.yaml in {work}: pass --params FILE, or --defaults")
    run = subprocess.run([sys.executable, "-m", "affectflow.cli", "predict", "--defaults", str(clip)], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error:") and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(work.iterdir()) == []  # no artifacts/mlflow.db, no mlruns/


def test_generated_corpora_are_marked_and_detected(tmp_path: Path) -> None:
    root = make_ravdess_like(tmp_path / "ravdess", actors=1, emotions=("sad",), clips_per_emotion=1, duration=0.5)
    assert (root / MARKER).is_file()
    clip = next(root.rglob("*.wav"))
    assert is_synthetic(clip) and not is_synthetic(tmp_path / "real" / "a" / "b.wav")


def test_the_demo_data_banner_reaches_the_ingest_summary_and_the_evaluation_report(
        synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from recognizer_support import trained

    t = trained(synth_root, tmp_path_factory)
    assert t["metrics"]["test"]["synthetic_data"] is True
    report = (t["base"] / "evaluate" / "report.md").read_text()
    assert "SYNTHETIC DEMO DATA" in report.splitlines()[2]
    from affectflow.stages.ingest import ingest

    res = ingest(t["params"], tmp_path_factory.mktemp("ing"))
    assert res.summary["synthetic_corpora"] == ["ravdess"]


def test_progress_prints_lines_in_a_log(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from affectflow.runtime import progress as P

    monkeypatch.setenv("AFFECTFLOW_PROGRESS", "log")
    monkeypatch.setattr(P, "LOG_EVERY_S", 0.0)
    assert list(P.progress(range(4), "features", total=4, unit="clip")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("features: 1/4 clip (25 %)") and lines[-1].startswith("features: 4/4 clip (100 %)")
    monkeypatch.setenv("AFFECTFLOW_PROGRESS", "0")
    list(P.progress(range(3), "quiet"))
    assert capsys.readouterr().err == ""


def test_the_executor_log_filter_keeps_what_people_read() -> None:
    from affectflow.orchestration.local import ExecutorLogFilter

    lines = [
        "[KFP Executor 2026-12-01 23:44:22,527 INFO]: Looking for component `train` in ...\n",
        "[KFP Executor 2026-12-01 23:44:22,528 INFO]: Got executor_input:\n", "{\n", '    "inputs": {\n',
        "        \"x\": 1\n", "    }\n", "}\n",
        "features: 480/1440 clip (33 %), 40 s, ~80 s left\n",
        "[KFP Executor 2026-12-01 23:44:30,136 INFO]: Skipping registering function DataSourceManager\n",
        "[KFP Executor 2026-12-01 23:44:31,000 WARNING]: resuming run from epoch 3\n",
        "Traceback (most recent call last):\n",
        "[KFP Executor 2026-12-01 23:46:35,880 INFO]: Wrote executor output file to /x/executor_output.json.\n",
    ]
    f = ExecutorLogFilter()
    kept = [line for line in lines if f.keep(line)]
    assert kept == [lines[7], lines[9], lines[10]]
    assert not f.in_json
