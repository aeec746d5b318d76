"""The whole Kubeflow DAG through kfp.local's SubprocessRunner on generated audio, tiny configuration.

Same pipeline object and component code as on a cluster. Checks: every stage task runs and
registers a version; a second run that changes only a training knob reuses the cached ingest /
validate / features tasks and registers the next version; a run that fails is recorded by the
exit handler in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from base_settings import base_params

from affectflow.config import Params
from affectflow.orchestration.ir import PipelineError
from pipelines.cli import run_local

pytestmark = pytest.mark.slow

UPSTREAM = ("resolve-params", "ingest", "validate", "plan-features", "features", "gather-features", "validate-features",
            "skip-augment", "skip-pretrain")
DOWNSTREAM = ("train", "evaluate", "register", "record-run-status")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kfp-local")


@pytest.fixture(scope="module")
def base(synth_root: Path, work: Path) -> Params:
    """Tiny and fast: eGeMAPS + MLP, 2 epochs, few bootstrap resamples, no retries."""
    return base_params({
        "paths.workdir": str(work / "work"),
        "paths.data_root": str(synth_root.parent),
        "ingest.classes": ["neutral", "happy", "sad", "angry"],
        "ingest.workers": 1, "features.workers": 1,
        "features.kinds": [], "features.shards": 2,  # the model's kind only, fanned out over two shard tasks
        "train.model": "egemaps_mlp", "train.epochs": 2, "train.patience": 2,
        "evaluate.bootstrap": 20,
        "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
        "tracking.artifact_location": str(work / "mlartifacts"),
        "pipeline.retries": 0,
    })


def _status_runs(base: Params) -> list[dict[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base.tracking.uri)
    exp = client.get_experiment_by_name(base.tracking.experiment + "-pipelines")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [{"state": r.data.tags.get("pipeline.state", ""), "status": r.info.status,
             "error": r.data.tags.get("pipeline.error_message", "")} for r in runs]


def test_full_dag_registers_a_version(base: Params) -> None:
    summary = run_local(base, base)
    tasks = summary["tasks"]
    assert summary["status"] == "SUCCESS"
    for name in UPSTREAM + DOWNSTREAM:
        assert tasks[name]["status"] == "SUCCESS", name
    assert "augment" not in tasks and "pretrain" not in tasks  # switched off in params
    assert tasks["features"]["attempts"] == 2  # one task per shard (the ParallelFor), no retries
    gathered = summary["features"]
    assert gathered["kinds"]["egemaps"]["computed"] == 0  # the shard tasks computed every clip
    assert gathered["kinds"]["egemaps"]["cached"] == gathered["unique_audio"] and set(gathered["kinds"]) == {"egemaps"}
    assert 0.0 <= summary["metrics"]["uar"] <= 1.0
    reg = summary["register"]
    assert reg["version"] == "1" and "challenger" in reg["aliases"]
    # promotion is the DAG's own task, present exactly when the gate passed
    assert ("promote" in tasks) == bool(reg["gate"]["passed"])
    if reg["gate"]["passed"]:
        assert summary["promotion"]["champion"] == "1"
    assert (Path(summary["pipeline_root"]) / "last_run.json").is_file()
    assert _status_runs(base)[-1] == {"state": "SUCCEEDED", "status": "FINISHED", "error": ""}


def test_training_change_reuses_upstream_cache(base: Params) -> None:
    if not (Path(base.paths.workdir) / "kfp" / "last_run.json").exists():
        run_local(base, base)
    changed = base.model_copy(deep=True)
    changed.train.epochs = 3
    summary = run_local(base, changed)
    assert summary["arguments"]["epochs"] == 3
    tasks = summary["tasks"]
    for name in ("ingest", "validate", "plan-features", "features", "gather-features", "validate-features"):
        assert tasks[name]["cached"], f"{name} should come from the cache"
    for name in ("resolve-params", "train", "evaluate", "register"):
        assert not tasks[name]["cached"], f"{name} should have run"
    assert int(summary["register"]["version"]) >= 2


def test_failed_run_is_recorded_by_the_exit_handler(base: Params, work: Path) -> None:
    broken = base.model_copy(deep=True)
    broken.paths.data_root = str(work / "nowhere")
    with pytest.raises(PipelineError, match=r"failed in task ingest: IngestError: .*nowhere.* folder not found "
                                            r"\(summary: .*last_run\.json\)$"):
        run_local(base, broken, cache=False)
    summary = json.loads((Path(base.paths.workdir) / "kfp" / "last_run.json").read_text())
    assert summary["tasks"]["ingest"]["cause"].startswith("IngestError: ")
    last = _status_runs(base)[-1]
    assert last["state"] == "FAILED" and last["status"] == "FAILED"


def test_switches_on_feed_train_the_synthetic_set_and_the_encoder(synth_root: Path, work: Path) -> None:
    """augment.enabled and pretrain.enabled take the dsl.If branches; train receives both outputs."""
    import json

    from affectflow.corpora.demo import make_ravdess_like

    target = make_ravdess_like(work / "target" / "tgt", actors=4, emotions=("neutral", "happy", "sad", "angry"),
                               clips_per_emotion=3, duration=1.0)
    data = work / "branches-data"
    data.mkdir(exist_ok=True)
    for name, src in (("src", synth_root), ("tgt", target)):
        if not (data / name).exists():
            (data / name).symlink_to(src, target_is_directory=True)
    w = work / "branches"
    base = base_params({
        "paths.workdir": str(w), "paths.data_root": str(data),
        "ingest.corpora": [{"name": "src", "adapter": "ravdess", "root": "src", "role": "source"},
                           {"name": "tgt", "adapter": "ravdess", "root": "tgt", "role": "target"}],
        "ingest.classes": ["neutral", "happy", "sad", "angry"], "ingest.workers": 1, "features.workers": 1,
        "features.kinds": ["egemaps"], "train.model": "egemaps_mlp", "train.epochs": 2, "evaluate.bootstrap": 10,
        "tracking.uri": f"sqlite:///{w / 'mlflow.db'}", "tracking.artifact_location": str(w / "mlartifacts"),
    })
    on = base.model_copy(deep=True)
    on.augment.enabled, on.augment.epochs, on.augment.samples_per_class = True, 5, 10
    on.augment.filters, on.augment.device = [], "cpu"  # keep every sample: train must receive some
    on.pretrain.enabled, on.pretrain.target_corpora, on.pretrain.epochs = True, ["tgt"], 2
    on.pretrain.compare_source_only, on.pretrain.probe_folds, on.pretrain.device = False, 2, "cpu"
    on.train.synthetic_ratio = 0.5
    summary = run_local(base, on)
    tasks = summary["tasks"]
    assert tasks["augment"]["status"] == tasks["pretrain"]["status"] == "SUCCESS"
    assert "skip-augment" not in tasks and "skip-pretrain" not in tasks
    train_dir = Path(summary["pipeline_root"]) / max(p.name for p in Path(summary["pipeline_root"]).glob("affectflow-train-*"))
    meta = json.loads((train_dir / "train" / "model" / "model" / "model.json").read_text())
    assert meta["train"]["n_synthetic"] > 0
    assert meta["lineage"]["pretrained"].endswith("encoder/encoder")
