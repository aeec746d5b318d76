"""Stage — train: the recognizer, through Ray Train, resumable and tracked.

`plan` (driver) picks rows, classes and normalisation from the training split and names the run;
`loop.train_loop_per_worker` (every worker) runs the epochs with checkpoints; `driver.fit` runs it
through `TorchTrainer`. The checkpoint kept is the epoch with the best *validation* UAR (the test
split is never read here); training stops when validation UAR has not improved for `patience`
epochs. Runs are named by a hash of their configuration and data, so the same command resumes and
a changed one starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from affectflow.config import Params
from affectflow.contracts.model_folder import write_model_folder
from affectflow.features.kinds import kind_spec
from affectflow.serving.recognizer import build_network
from affectflow.stages.spec import Inputs
from affectflow.stages.train.calibrate import fit_calibration
from affectflow.stages.train.driver import fit
from affectflow.stages.train.linear import closed_form
from affectflow.stages.train.loop import TrainingInterrupted
from affectflow.stages.train.plan import Plan, TrainingError, plan, select_synthetic
from affectflow.stages.train.shared import RUN_ID_FILE, pull, push
from affectflow.storage import atomic_write_json, save_figure

__all__ = ["Plan", "TrainResult", "TrainingError", "TrainingInterrupted", "fit", "plan", "run", "select_synthetic",
           "train"]


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    summary: dict[str, Any]


def plot_curves(history: list[dict[str, float]], best_epoch: int, path: str | Path, crops: bool) -> Path:
    """Loss and UAR per epoch, best (validation) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(ep, [h["train_acc"] for h in history],
           label="train accuracy (augmented crops)" if crops else "train accuracy (augmented)")
    b.plot(ep, [h["val_uar"] for h in history], label="validation UAR")
    b.set(xlabel="epoch", ylabel="score", title="accuracy / UAR", ylim=(0, 1))
    for ax in (a, b):
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def train(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path,
          pretrained: str | Path | None = None, synthetic: str | Path | None = None) -> TrainResult:
    """Train one recognizer on the manifest's train split (best epoch by validation UAR).

    Writes `<out>/model/` (model folder), `<out>/curves.png`, `<out>/summary.json`, checkpoints under
    `<checkpoint root>/<run>/` (`shared.checkpoint_root`: outside `out`, so a retried or re-submitted
    run resumes and the output holds no optimiser state), and one MLflow run with params, per-epoch
    metrics, lineage tags, the plots, the model folder and the pyfunc model.
    """
    from affectflow import stages
    from affectflow.serving.pyfunc import log_pyfunc
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(params, manifest, features_dir, out, pretrained, synthetic)
    pull(p.worker, epochs=p.worker.local_mode)  # an s3:// checkpoint folder: its run id and last epoch
    resume_file = Path(p.worker.ckpt_dir) / RUN_ID_FILE
    with tracking.start_run(params, p.run_name, tags={"stage": "train", **p.meta.lineage}, resume_file=resume_file,
                            sections=stages.get("train").sections) as run:
        push(p.worker, prune=False)  # the run id, so a run killed before its first epoch resumes in MLflow too
        worker = p.worker.with_mlflow(tracking.run_info(run))
        fitter = closed_form(worker.arch)  # ssl_linear: a regression fitted here, not the epoch loop
        outcome = fitter(worker) if fitter else fit(params.train, worker, p.run_name)
        p.meta.arch_config = outcome.get("arch_config", p.meta.arch_config)  # e.g. the layer `auto` chose
        model = build_network(p.meta)
        model.load_state_dict({k: torch.tensor(v) for k, v in outcome["best_state"].items()})
        hist = outcome["history"]
        best = outcome["best_epoch"]
        meta = p.meta.model_copy(deep=True)
        meta.train = meta.train.model_copy(update={
            "best_epoch": best, "val_uar": outcome["best_uar"], "epochs_run": len(hist),
            "stopped_early": outcome["stopped_early"], "params": params.train.model_dump(mode="json")})
        meta.calibration = fit_calibration(p.worker, model)
        meta.mlflow = tracking.run_info(run)
        model_dir = write_model_folder(out / "model", model, meta)
        curves = plot_curves(hist, best, out / "curves.png", crops=kind_spec(meta.feature).frame_level)
        summary = {"model_dir": str(model_dir), "run_name": p.run_name, "mlflow_run_id": run.info.run_id,
                   "classes": meta.classes, "best_epoch": best, "val_uar": round(outcome["best_uar"], 4),
                   "val_wa": round(hist[best]["val_wa"], 4) if 0 <= best < len(hist) else None,
                   "epochs_run": len(hist), "stopped_early": outcome["stopped_early"],
                   "n_train": meta.train.n_train, "n_val": meta.train.n_val, "n_synthetic": meta.train.n_synthetic,
                   "device": outcome["device"], "world_size": outcome["world_size"],
                   "checkpoints": p.worker.ckpt_uri or p.worker.ckpt_dir,
                   "calibration": meta.calibration.model_dump() if meta.calibration else None,
                   **({"layer_choice": outcome["layer_choice"]} if "layer_choice" in outcome else {})}
        atomic_write_json(out / "summary.json", summary)
        tracking.log_training(run, meta.classes, summary, curves, model_dir)
        if params.tracking.log_model:
            log_pyfunc(model_dir, name="model")
    return TrainResult(out_dir=out, model_dir=model_dir, summary=summary)


def run(params: Params, inputs: Inputs, out_dir: Path) -> TrainResult:
    return train(params, inputs["manifest"], inputs["features"], out_dir,
                 pretrained=inputs.get("encoder"), synthetic=inputs.get("synthetic"))
