"""The register tail as `affectflow register --no-rescore` runs it (register, then promote when
registry.auto_promote), for tests that register models directly: register's result with the
promotion's outcome merged in (`promoted`, and the gate / champion / aliases at promotion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectflow.config import Params


def register(params: Params, model_dir: str | Path, metrics: str | Path, out_dir: str | Path, *,
             rescore: str | Path | None = None, run_id: str | None = None, model_uri: str | None = None,
             data_version: str | None = None) -> dict[str, Any]:
    from affectflow.stages.runner import run_chain

    out = Path(out_dir)
    res = run_chain(params, ["register", "promote"],
                    {"model": Path(model_dir), "evaluation": Path(metrics), "rescore": rescore},
                    {"register": out, "promote": out / "promote"},
                    options={"register": {"run_id": run_id, "model_uri": model_uri, "data_version": data_version}})
    reg = dict(res["register"].summary)
    promo = res["promote"].summary
    if promo.get("skipped"):
        return {**reg, "promoted": False}
    return {**reg, **{k: promo[k] for k in ("promoted", "gate", "champion", "aliases")}}


def model_json(mlflow: dict[str, Any] | None, classes: tuple[str, ...], **lineage: str) -> dict[str, Any]:
    """model.json of a weightless test model folder: the contract's required fields and its MLflow block."""
    meta = {"arch": "egemaps_mlp", "classes": list(classes), "feature": "egemaps", "feature_config": {},
            "audio": {"sample_rate": 16000}, "normalization": {}, "arch_config": {}, "input_dim": 88,
            "lineage": dict(lineage)}
    return meta if mlflow is None else {**meta, "mlflow": mlflow}


def evaluation_json(content_hash: str, run_id: str | None, uar: float, recall: dict[str, float],
                    test_hash: str) -> dict[str, Any]:
    """metrics.json (`contracts.evaluation`, format 2) of a model with these test scores."""
    return {"format": 2, "model": {"content_hash": content_hash, "mlflow_run_id": run_id},
            "test": {"n": 40, "uar": uar, "wa": uar, "macro_f1": uar, "per_class_recall": recall,
                     "test_manifest_hash": test_hash, "classes": list(recall)}}
