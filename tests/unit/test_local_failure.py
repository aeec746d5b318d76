"""`affectflow pipeline run --local`'s last word on a failure: the failed task and the one line of its log
that says why (the whole run, failing in ingest, is in tests/integration/test_pipeline_local.py)."""

from __future__ import annotations

from pathlib import Path

from affectflow.orchestration.local import FailureCause, TaskRecord, failure_line

TRACEBACK = """\
    Traceback (most recent call last):
      File "/x/kfp/dsl/executor_main.py", line 109, in <module>
        raise IngestError(str(e)) from None
    affectflow.stages.ingest.IngestError: /data/nowhere/ravdess: RAVDESS folder not found
    pipeline run local-pipeline-exit-handler-1: FAILED (Task exit-handler-1 failed.)
"""


def test_the_cause_is_the_traceback_last_line_without_the_module_path() -> None:
    cause = FailureCause()
    for line in TRACEBACK.splitlines(keepends=True):
        cause.see(line)
    assert cause.last == "IngestError: /data/nowhere/ravdess: RAVDESS folder not found"
    cause.see("error: manifest.csv: row 3 (line 4), field 'path': not UTF-8 text\n")
    assert cause.last == "error: manifest.csv: row 3 (line 4), field 'path': not UTF-8 text"
    cause.see("UserWarning: a warning is not a cause\n")
    assert cause.last.startswith("error: manifest.csv")


def test_the_failure_line_names_each_failed_task_with_its_cause() -> None:
    tasks = {"resolve-params": TaskRecord(status="SUCCESS"),
             "ingest": TaskRecord(status="FAILURE", cause="IngestError: /d/ravdess: RAVDESS folder not found"),
             "exit-handler-1": TaskRecord(status="FAILURE")}
    assert failure_line(tasks, Path("/r/last_run.json")) == (
        "local pipeline run failed in task ingest: IngestError: /d/ravdess: RAVDESS folder not found "
        "(summary: /r/last_run.json)")
    assert failure_line({"train": TaskRecord(status="FAILURE")}, Path("s.json")) == \
        "local pipeline run failed in task train (summary: s.json)"


def test_the_run_summary_reads_the_evaluation_through_its_contract(tmp_path: Path) -> None:
    import json

    from affectflow.orchestration.local import _read_evaluation

    folder = tmp_path / "evaluation"
    folder.mkdir()
    test = {"n": 2, "uar": 0.5, "wa": 0.5, "macro_f1": 0.5, "per_class_recall": {"a": 0.5}, "test_manifest_hash": "t"}
    legacy = {"model": {"content_hash": "c"}, "model_dir": "/m", "uar": 0.5, "test": test}  # the earlier layout
    (folder / "metrics.json").write_text(json.dumps(legacy))
    got = _read_evaluation(TaskRecord(outputs={"evaluation": {"uri": str(folder)}}))
    assert got is not None and got["format"] == 2 and "uar" not in got and got["test"]["uar"] == 0.5
    assert got["model"]["dir"] == "/m"
    (folder / "metrics.json").write_text("{")
    assert _read_evaluation(TaskRecord(outputs={"evaluation": {"uri": str(folder)}})) is None  # a summary, not a crash
    assert _read_evaluation(None) is None
