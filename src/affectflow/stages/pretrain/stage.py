"""Stage function `pretrain(params, manifest, features_dir, out_dir) -> PretrainResult`.

Steps: choose source / target / held-out rows (target test speakers never) -> load and normalise
features -> train the same encoder source-only (the "before" reference) and with DANN -> probe the
held-out embeddings for the domain (proxy A-distance) and project them to 2-D -> write
`encoder/` (a recognizer model folder that `train.train(pretrained=...)` fine-tunes), report.json,
report.md and PNGs as one folder, atomically -> MLflow (per-epoch metrics, report, plots, encoder).
`prepare_inputs` and `fit` are also what `affectflow ablate dann` runs, so the table measures the
stage itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from affectflow.config import Params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.contracts.model_folder import (
    ModelMeta,
    PretrainFacts,
    TrainFacts,
    corpus_normalization,
    write_model_folder,
)
from affectflow.contracts.workdir import ENCODER_SUBDIR
from affectflow.features.keys import kind_config, kind_spec
from affectflow.metrics import confusion, uar_cm
from affectflow.models import arch_config, build_model, feature_kind
from affectflow.models.dann import Dann
from affectflow.models.data import normalize
from affectflow.runtime.device import resolve_device
from affectflow.stages.pretrain.data import (
    Domains,
    InputNorm,
    PretrainDataError,
    RowSets,
    assert_no_target_test,
    feature_key,
    fit_norm,
    probe_vectors,
    resolve_domains,
    select_rows,
    target_test_speakers,
)
from affectflow.stages.pretrain.loop import LoopData, embed, source_val_uar, train_dann
from affectflow.stages.pretrain.probe import probe_all, project_2d
from affectflow.stages.pretrain.report import log_to_mlflow, plot_curves, plot_projection, report_md
from affectflow.stages.spec import REPORT_JSON, REPORT_MD, ReportedOutput
from affectflow.stages.spec import Inputs as StageInputs
from affectflow.storage import atomic_dir, atomic_write_json, atomic_write_text

ENCODER = ENCODER_SUBDIR
NO_SPEAKER = -1
"""Speaker label of rows that have none (synthetic samples): ignored by the speaker loss."""


@dataclass(kw_only=True)
class PretrainResult(ReportedOutput):
    encoder_dir: Path


@dataclass
class Inputs:
    """Everything `fit` and the report need, read once from the manifest and the feature store."""

    params: Params
    df: pd.DataFrame
    where: str
    domains: Domains
    rows: RowSets
    kind: str
    input_dim: int
    feature_key: str
    norm: InputNorm
    speakers: list[str]
    data: LoopData
    held_x: list[np.ndarray]
    features_dir: Path

    @property
    def classes(self) -> list[str]:
        return self.rows.classes

    def normalised(self, rows: pd.DataFrame) -> list[np.ndarray]:
        """Features of any rows of the manifest, normalised the way this DANN sees its corpus."""
        fs = FeatureSet(self.features_dir)
        return self.norm.apply(fs.load(self.kind, rows["utt_id"].tolist()), rows["corpus"].astype(str).tolist())

    def add_synthetic(self, X: np.ndarray, y: np.ndarray, corpus: str) -> None:
        """Append synthetic source samples (raw features, class indices): labelled source rows of
        domain `corpus`, without a speaker."""
        stats = self.norm.stats_for(corpus)
        self.data.src_x += [normalize(a, stats) for a in X]
        self.data.src_y = np.concatenate([self.data.src_y, y.astype(np.int64)])
        self.data.src_domain = np.concatenate([self.data.src_domain, self.domains.labels([corpus] * len(y))])
        self.data.src_speaker = np.concatenate([self.data.src_speaker, np.full(len(y), NO_SPEAKER, np.int64)])


def prepare_inputs(params: Params, manifest: str | Path | pd.DataFrame, features_dir: str | Path) -> Inputs:
    """Rows, domain and speaker labels, normalisation (adaptation clips only) and arrays."""
    cfg, tc = params.pretrain, params.train
    where = "manifest" if isinstance(manifest, pd.DataFrame) else str(manifest)
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    domains = resolve_domains(df, cfg, where)
    rows = select_rows(df, domains, params.ingest.classes, where)
    kind = feature_kind(tc.model)
    fs = FeatureSet(features_dir)
    src_raw = fs.load(kind, rows.source_train["utt_id"].tolist())
    tgt_raw = fs.load(kind, rows.target_train["utt_id"].tolist())
    base_mode = kind_spec(kind).normalization(tc.normalize)  # the recognizer's rule (train's plan)
    src_c = rows.source_train["corpus"].astype(str).to_numpy()
    tgt_c = rows.target_train["corpus"].astype(str).to_numpy()
    adaptation = {c: [a for a, k in zip(src_raw, src_c, strict=True) if k == c] for c in domains.sources}
    adaptation |= {c: [a for a, k in zip(tgt_raw, tgt_c, strict=True) if k == c] for c in domains.targets}
    norm = fit_norm(cfg.normalize, base_mode, src_raw, adaptation)
    speakers = sorted(set(rows.source_train["speaker"].astype(str)) | set(rows.target_train["speaker"].astype(str)))
    spk_of = {s: i for i, s in enumerate(speakers)}
    y_of = {c: i for i, c in enumerate(rows.classes)}
    data = LoopData(
        src_x=norm.apply(src_raw, src_c.tolist()),
        src_y=rows.source_train["emotion"].map(y_of).to_numpy(np.int64),
        src_domain=domains.labels(src_c),
        src_speaker=rows.source_train["speaker"].astype(str).map(spk_of).to_numpy(np.int64),
        tgt_x=norm.apply(tgt_raw, tgt_c.tolist()),
        tgt_domain=domains.labels(tgt_c),
        tgt_speaker=rows.target_train["speaker"].astype(str).map(spk_of).to_numpy(np.int64),
        val_x=[], val_y=rows.source_val["emotion"].map(y_of).to_numpy(np.int64),
        val_speaker=rows.source_val["speaker"].astype(str).to_numpy(),
    )
    inp = Inputs(params=params, df=df, where=where, domains=domains, rows=rows, kind=kind,
                 input_dim=int(src_raw[0].shape[0]), feature_key=feature_key(fs, kind, rows.source_train["utt_id"]),
                 norm=norm, speakers=speakers, data=data, held_x=[], features_dir=Path(features_dir))
    data.val_x = inp.normalised(rows.source_val)
    inp.held_x = inp.normalised(rows.held_out)
    return inp


def _arch(inp: Inputs) -> dict[str, Any]:
    """The recognizer's architecture configuration, with what its features set (`ModelSpec.feature_facts`)."""
    return arch_config(inp.params.train, kind_spec(inp.kind).facts(inp.params.features))


def build_dann(inp: Inputs, seed: int) -> Dann:
    """A fresh recognizer (train.model) inside a DANN; the same seed gives the same recognizer weights."""
    cfg, tc = inp.params.pretrain, inp.params.train
    torch.manual_seed(seed)
    rec = build_model(tc.model, _arch(inp), inp.input_dim, len(inp.classes))
    if not any(True for _ in rec.encoder.parameters()):  # e.g. ssl_linear: a fixed layer, a closed-form head
        raise PretrainDataError(f"train.model {tc.model}: its encoder has no parameters, so DANN has nothing to "
                                "adapt; pretrain a recognizer with a trainable encoder (ssl_head; with "
                                "features.ssl.layers [k], an MLP on layer k)")
    n_spk = len(inp.speakers) if cfg.speaker_adversarial else 0
    return Dann(rec, len(inp.domains.names), n_spk, cfg.domain_hidden, cfg.head_dropout)


def fit(inp: Inputs, device: torch.device, adversarial: bool, seed: int, desc: str = "dann",
        log_prefix: str | None = None) -> tuple[Dann, list[dict[str, float]], float]:
    """Train one model; (model, history, seconds). `log_prefix`: per-epoch metrics to the active MLflow run."""
    cfg = inp.params.pretrain
    assert_no_target_test(inp.rows.target_train, inp.df, inp.domains, f"{inp.where}: adaptation set")
    model = build_dann(inp, seed)
    on_epoch = None
    if log_prefix is not None:
        import mlflow

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            mlflow.log_metrics({f"{log_prefix}{k}": v for k, v in m.items()}, step=epoch)

    t0 = time.perf_counter()
    hist = train_dann(model, inp.data, cfg, inp.params.train, device, adversarial, seed, desc, on_epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, hist, time.perf_counter() - t0


def class_set_uar(logits: np.ndarray, emotions: pd.Series, classes: list[str]) -> tuple[float, np.ndarray]:
    """UAR of the rows with predictions over all of the model's `classes` (as `evaluate` scores:
    never narrowed to the classes the rows happen to contain; the average runs over the classes
    present); also the predicted class names."""
    pred = np.asarray(classes)[logits.argmax(1)]
    y_of = {c: i for i, c in enumerate(classes)}
    cm = confusion(emotions.map(y_of).to_numpy(), np.array([y_of[p] for p in pred]), len(classes))
    return uar_cm(cm), pred


def _run_name(inp: Inputs) -> str:
    what = {"pretrain": inp.params.pretrain.model_dump(mode="json"), "model": inp.params.train.model,
            "arch": _arch(inp), "feature_key": inp.feature_key,
            "source": inp.rows.source_train["utt_id"].tolist(), "target": inp.rows.target_train["utt_id"].tolist()}
    return f"dann-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"


def _sizes(rows: pd.DataFrame) -> dict[str, int]:
    return {"clips": len(rows), "speakers": int(rows["speaker"].nunique())}


def encoder_meta(inp: Inputs, run_name: str, lineage: dict[str, str], seconds: float, device: str) -> ModelMeta:
    """model.json of the encoder folder: the recognizer's fields plus what DANN saw."""
    p, tc = inp.params, inp.params.train
    feature_cfg = kind_config(p, inp.kind)
    r = inp.rows
    facts = PretrainFacts(
        method="dann", domains=inp.domains.names, sources=list(inp.domains.sources),
        targets=list(inp.domains.targets), adaptation_speakers=sorted(set(r.target_train["speaker"])),
        normalize=inp.norm.mode, normalization=inp.norm.as_dict(),
        params=p.pretrain.model_dump(mode="json"), seconds=round(seconds, 2), device=device)
    per_corpus, deploy = corpus_normalization(facts)
    return ModelMeta(
        arch=tc.model, classes=inp.classes, feature=inp.kind, feature_config=feature_cfg,
        feature_key=inp.feature_key, audio=p.audio.model_dump(mode="json"),
        normalization=inp.norm.base.as_dict(), normalization_per_corpus=per_corpus, deploy_corpus=deploy,
        arch_config=_arch(inp), input_dim=inp.input_dim,
        lineage={**lineage, "run_name": run_name, "pretrain_params_hash": p.section_hash("pretrain", "train")},
        train=TrainFacts(corpora=list(inp.domains.sources), n_train=len(r.source_train), n_val=len(r.source_val),
                         train_speakers=sorted(set(r.source_train["speaker"]) | set(r.target_train["speaker"])),
                         val_speakers=sorted(set(r.source_val["speaker"]))),
        pretrain=facts)


def pretrain(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path) -> PretrainResult:
    """DANN-pretrain the recognizer's encoder; write `<out>/encoder/` + report + PNGs; log to MLflow."""
    from affectflow.stages import get as get_stage
    from affectflow.tracking import runs as tracking
    from affectflow.tracking.lineage import lineage as lineage_tags

    cfg = params.pretrain
    out = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, "pretrain.device")
    source_manifest = manifest
    if cfg.target_log:  # the prediction log as one more unlabelled target (log_target.py)
        from affectflow.stages.pretrain.log_target import with_log_target

        manifest, features_dir, params = with_log_target(params, read_manifest(manifest), features_dir,  # type: ignore[assignment]
                                                         out.with_name(out.name + "-log-target"))
        cfg = params.pretrain
    inp = prepare_inputs(params, manifest, features_dir)
    run_name = _run_name(inp)
    lineage = {k: str(v) for k, v in lineage_tags(params, inp.df, source_manifest, features_dir,
                                                  sections=get_stage("pretrain").sections).items()}
    with tracking.start_run(params, run_name, tags={"stage": "pretrain", **lineage}) as run:
        models: dict[str, Dann] = {}
        histories: dict[str, list[dict[str, float]]] = {}
        seconds: dict[str, float] = {}
        if cfg.compare_source_only:
            models["source-only"], histories["source-only"], seconds["source_only"] = fit(
                inp, device, adversarial=False, seed=cfg.seed, desc="source-only", log_prefix="source_only_")
        models["DANN"], histories["DANN"], seconds["dann"] = fit(
            inp, device, adversarial=True, seed=cfg.seed, desc="dann", log_prefix="dann_")
        chosen, selection = models["DANN"], None
        if cfg.select == "dev":  # whether to adapt and with which lambda, without target labels (select.py)
            from affectflow.stages.pretrain.select import select_for_stage

            choice, chosen = select_for_stage(inp, models, device, fit)
            selection = {"method": "dev", **asdict(choice), "risks": {str(k): v for k, v in choice.risks.items()}}
        report = _analyse(inp, models, device)
        report["selection"] = selection
        report.update({
            "arch": params.train.model, "feature": inp.kind, "device": str(device), "seconds": seconds,
            "domains": {"sources": list(inp.domains.sources), "targets": list(inp.domains.targets),
                        "labels": inp.domains.names},
            "settings": cfg.model_dump(mode="json"), "run_name": run_name,
            "mlflow_run_id": run.info.run_id, "encoder_dir": str(out / ENCODER),
            "data": {"source_train": _sizes(inp.rows.source_train), "source_val": _sizes(inp.rows.source_val),
                     "target_train": {t: _sizes(inp.rows.target_train[inp.rows.target_train["corpus"] == t])
                                      for t in inp.domains.targets},
                     "held_out": _sizes(inp.rows.held_out),
                     "target_test_speakers": len(target_test_speakers(inp.df, inp.domains))},
            "history": histories,
        })
        meta = encoder_meta(inp, run_name, lineage, seconds["dann"], str(device))
        meta.mlflow = tracking.run_info(run)
        with atomic_dir(out) as tmp:
            write_model_folder(tmp / ENCODER, chosen.recognizer.cpu(), meta)
            _plots(tmp, inp, report.pop("_projection"), histories)
            atomic_write_json(tmp / REPORT_JSON, report)
            atomic_write_text(tmp / REPORT_MD, report_md(report))
        log_to_mlflow(out, report)
    summary = _summary(report)
    return PretrainResult(out, summary, encoder_dir=out / ENCODER, mlflow_run_id=run.info.run_id)


def _analyse(inp: Inputs, models: dict[str, Dann], device: torch.device) -> dict[str, Any]:
    """Domain probes and emotion UARs on held-out speakers; projection coordinates (popped later)."""
    cfg = inp.params.pretrain
    held = inp.rows.held_out
    corpora = held["corpus"].astype(str).to_numpy()
    speakers = held["speaker"].astype(str).to_numpy()
    views: dict[str, np.ndarray] = {"input features": probe_vectors(inp.held_x)}
    for name, m in models.items():
        views[f"{name} encoder"] = embed(m.encoder, inp.held_x, device, cfg.batch_size)
    probe: dict[str, list[dict[str, Any]]] = {}
    for name, z in views.items():
        if len(z):
            probe[name] = [r.as_dict() for r in probe_all(z, corpora, speakers, inp.domains.targets,
                                                          inp.domains.sources, cfg)]
    tgt_rows = held[inp.domains.is_target(held["corpus"]) & held["emotion"].isin(inp.classes)]
    tgt_x = [inp.held_x[i] for i in np.flatnonzero(held.index.isin(tgt_rows.index))]
    emotion: dict[str, dict[str, float | None]] = {}
    for name, m in models.items():
        tv = class_set_uar(embed(m.recognizer, tgt_x, device, cfg.batch_size), tgt_rows["emotion"],
                              inp.classes)[0] if len(tgt_x) else None
        emotion[name] = {"source_val_uar": source_val_uar(m, inp.data, device, cfg.batch_size), "target_val_uar": tv}
    rng = np.random.default_rng(cfg.seed)
    keep = np.sort(rng.choice(len(held), size=min(len(held), cfg.projection_max_points), replace=False))
    panels = [(name, project_2d(z[keep], cfg.projection, cfg.seed)) for name, z in views.items() if len(z) > 2]
    return {"probe": probe, "emotion": emotion, "held_out_note": "validation speakers of every corpus",
            "_projection": (panels, corpora[keep], held["emotion"].astype(str).to_numpy()[keep])}


def _plots(folder: Path, inp: Inputs, projection: tuple[Any, np.ndarray, np.ndarray],
           histories: dict[str, list[dict[str, float]]]) -> None:
    panels, corpora, emotions = projection
    if panels:
        plot_projection(folder / "projection.png", panels, corpora, emotions, inp.domains.sources,
                        inp.params.pretrain.projection.upper() if inp.params.pretrain.projection == "pca" else "t-SNE")
    plot_curves(folder / "curves.png", histories)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"device": report["device"], "seconds_dann": round(report["seconds"]["dann"], 2)}
    for stage, rows in report["probe"].items():
        key = stage.replace(" encoder", "").replace(" ", "_").replace("-", "_").lower()
        for p in rows:
            out[f"a_distance_{key}_{p['target']}"] = p["a_distance"]
    for stage, e in report["emotion"].items():
        key = stage.replace("-", "_").lower()
        out |= {f"{k}_{key}": (None if v is None else round(float(v), 4)) for k, v in e.items()}
    return out


def run(params: Params, inputs: StageInputs, out_dir: Path) -> PretrainResult:
    return pretrain(params, inputs["manifest"], inputs["features"], out_dir)
