"""Leave-one-corpus-out (`affectflow ablate generalization`): how a recognizer holds up on a corpus
nobody trained or tuned on.

For every corpus H of `studies.generalization.held_out` (default: all study corpora), every
condition is trained on the other corpora and scored on every clip of H, with predictions over the
study's class set (default angry / happy / neutral / sad). The product's own stages do the work —
ingest and features once for all corpora, then per cell the train stage and the evaluate stage
(a `dann` cell: the pretrain stage with H as unlabelled target first) — so a row measures exactly
what a user who ships that configuration gets; only the `svm` reference row (eGeMAPS functionals,
per-corpus standardisation, RBF SVM C=10 balanced: what a user would try first) runs outside them.

Honest protocol, asserted per cell: no clip of H is in labelled training; where DANN adapts to H,
H's rows reach it with their labels removed; a condition's `select` candidates are chosen by
leave-one-source-corpus-out inside the training corpora (each in turn the inner held-out corpus),
never on H. Outputs: `table.md`, `results.json`, `cells.parquet`, `generalization.png` beside the
runs and in one MLflow run. Cells are cached: a re-run computes only what is missing.

Two ways of scoring the held-out corpus, both reported for every row (`PROTOCOLS`): offline, the
whole corpus at once (what every figure meant before; the evaluate stage), and streamed, as a
deployment meets it: the clips arrive one at a time in a seeded shuffled order and each is scored
with only what was seen before it, without labels (`streamed_probabilities`: a model folder + an
ordered clip stream -> predictions, through the product's own deployment statistics; other rows
call it, or `streamed_matrix` for rows outside the product). `streamed_pooled` is the reference:
clip by clip with the pooled training statistics only.

The protocols a held-out corpus is scored by and the table, plot and MLflow run the cells add up
to live in `affectflow.studies.generalization_scores`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import GeneralizationConfig, Params, StudyCondition, with_overrides
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.workdir import MANIFEST_FILE
from affectflow.features.ssl import SSL
from affectflow.models import feature_kind
from affectflow.runtime.progress import progress
from affectflow.storage import atomic_write_json
from affectflow.studies import ssl_rows
from affectflow.studies.generalization_scores import (
    PROTOCOLS,
    SELECTION_PROTOCOL,
    log_to_mlflow,
    score_cell,
    streamed_matrix,
    summarise,
    table_md,
    with_streamed,
    write_outputs,
)
from affectflow.studies.generalization_scores import STREAMED as STREAMED  # the study's scoring API
from affectflow.studies.generalization_scores import stream_order as stream_order
from affectflow.studies.generalization_scores import streamed_probabilities as streamed_probabilities

CELL_FILE = "cell.json"
log = logging.getLogger(__name__)


class StudyError(ValueError):
    """The study cannot run with these settings; the message names the setting."""


class HeldOutLeakError(AssertionError):
    """A clip of the held-out corpus would reach labelled training."""


@dataclass
class StudyResult:
    out_dir: Path
    summary: dict[str, Any]
    table_md: str


# ----------------------------------------------------------------------------- settings
def study_params(params: Params, out: Path, conditions: list[str] | None = None) -> Params:
    """params for the study: its corpora (all labelled), classes, no source test speakers (the
    held-out corpus is the test), every feature kind a condition needs (of `conditions`, default
    all: an `ssl` row needs `features.ssl.checkpoint`, the others not), a study-local MLflow store."""
    g = params.studies.generalization
    names = [c.name for c in g.corpora]
    if len(set(names)) != len(names):
        raise StudyError(f"studies.generalization.corpora: names must be unique, got {names}")
    kinds, copies = {"egemaps"}, 0  # the reference reads eGeMAPS
    for name, cond in g.conditions.items():
        if name not in (conditions if conditions is not None else default_conditions(params)):
            continue
        where = f"studies.generalization.conditions.{name}"
        p = _with(params, cond.overrides, f"{where}.overrides")
        for cand, over in {"": {}, **cond.select}.items():
            q = _with(p, over, f"{where}.select.{cand}")
            if q.features != params.features:  # one feature store serves every cell
                raise StudyError(f"{where}: overrides features.*; the study computes one set of features "
                                 "(set features.* for the whole study instead)")
            kinds.add(feature_kind(q.train.model))
            copies = max(copies, q.train.robustness_copies)
        kinds |= set(METHODS[cond.method].kinds)
        if SSL in kinds and not params.features.ssl.checkpoint:
            raise StudyError(f"studies.generalization.conditions.{name} reads the ssl features but "
                             "features.ssl.checkpoint is empty: set it for the study (e.g. --set "
                             "features.ssl.checkpoint=pkg:whisper-base) or leave the row out (--conditions)")
    return with_overrides(params, {
        "ingest.corpora": [c.model_copy(update={"role": "source"}).model_dump(mode="json") for c in g.corpora],
        "ingest.classes": list(g.classes), "ingest.label_map": dict(g.label_map),
        "splits.source_test": False,
        "features.kinds": sorted(kinds | set(params.features.kinds)),  # + the extra kinds asked for
        "features.robustness.copies": max(copies, params.features.robustness.copies),
        "tracking.uri": f"sqlite:///{(out / 'mlflow.db').resolve()}",
        "tracking.artifact_location": str((out / "mlartifacts").resolve()),
        "tracking.log_model": False, "evaluate.bootstrap": 0, "evaluate.cross_corpus": [],
        "evaluate.classes": list(g.classes),
    })


def _with(params: Params, overrides: Mapping[str, Any], where: str) -> Params:
    try:
        return with_overrides(params, dict(overrides))
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


def needs_ssl(params: Params, cond: StudyCondition) -> bool:
    """Whether a row reads the ssl features (its model or its method)."""
    p = _with(params, cond.overrides, "studies.generalization.conditions")
    return feature_kind(p.train.model) == SSL or SSL in METHODS[cond.method].kinds


def default_conditions(params: Params) -> list[str]:
    """Every row, less those reading the ssl features when no `features.ssl.checkpoint` is set
    (said in one line; naming such a row in --conditions is an error instead)."""
    g = params.studies.generalization
    if params.features.ssl.checkpoint:
        return list(g.conditions)
    left = [n for n, c in g.conditions.items() if needs_ssl(params, c)]
    if left:
        log.warning("studies.generalization: rows %s read the ssl features and features.ssl.checkpoint is empty: "
                    "left out (set it, e.g. --set features.ssl.checkpoint=pkg:whisper-base)", ", ".join(left))
    return [n for n in g.conditions if n not in left]


def held_out_names(g: GeneralizationConfig) -> list[str]:
    names = [c.name for c in g.corpora]
    unknown = sorted(set(g.held_out) - set(names))
    if unknown:
        raise StudyError(f"studies.generalization.held_out: {unknown} are not study corpora {names}")
    return list(g.held_out) or names


# ----------------------------------------------------------------------------- manifests of a cell
def training_manifest(df: pd.DataFrame, train_corpora: list[str], held: str) -> pd.DataFrame:
    """The training corpora (labelled, their train / val speakers) and `held` (role heldout, every
    clip in the test split); nothing else."""
    out = df[df["corpus"].isin([*train_corpora, held])].copy()
    is_held = out["corpus"] == held
    out.loc[is_held, "role"] = "heldout"
    out.loc[is_held, "split"] = "test"
    out.loc[~is_held, "role"] = "source"
    assert_no_held_out_in_training(out, held)
    return out.reset_index(drop=True)


def adaptation_manifest(df: pd.DataFrame, train_corpora: list[str], held: str) -> pd.DataFrame:
    """For DANN: the training corpora labelled, `held` as the unlabelled target (labels removed, so
    no stage can read them; its per-corpus train / val speakers as ingest dealt them)."""
    out = df[df["corpus"].isin([*train_corpora, held])].copy()
    is_held = out["corpus"] == held
    out.loc[is_held, "role"] = "target"
    out.loc[is_held, ["label", "emotion"]] = ""
    out.loc[~is_held, "role"] = "source"
    assert_no_held_out_in_training(out, held)
    if (out.loc[is_held, "emotion"] != "").any():
        raise HeldOutLeakError(f"held-out corpus {held}: labels reached the adaptation manifest")
    return out.reset_index(drop=True)


def assert_no_held_out_in_training(df: pd.DataFrame, held: str) -> None:
    """No labelled (source) row of the held-out corpus, by corpus name and by audio content."""
    src = df[df["role"] == "source"]
    held_rows = df[df["corpus"] == held]
    if (src["corpus"] == held).any():
        raise HeldOutLeakError(f"held-out corpus {held}: {int((src['corpus'] == held).sum())} of its clips "
                               "are labelled training rows")
    shared = set(src["sha256"]) & set(held_rows["sha256"])
    if shared:
        raise HeldOutLeakError(f"held-out corpus {held}: {len(shared)} of its clips are byte-identical to "
                               "training clips")


def standardised_egemaps(features: Path, rows: pd.DataFrame) -> np.ndarray:
    """eGeMAPS functionals of `rows`, every corpus z-scored by its own clips' statistics (label-free)."""
    X = raw_egemaps(features, rows)
    out = np.empty_like(X)
    for corpus in rows["corpus"].unique():
        m = (rows["corpus"] == corpus).to_numpy()
        mu, sd = X[m].mean(axis=0), X[m].std(axis=0)
        out[m] = (X[m] - mu) / np.maximum(sd, 1e-8)
    return out


def raw_egemaps(features: Path, rows: pd.DataFrame) -> np.ndarray:
    from affectflow.contracts.feature_store import FeatureSet

    return FeatureSet(features).matrix("egemaps", rows["utt_id"].tolist()).astype(np.float64)


def streamed_egemaps(params: Params, features: Path, train_rows: pd.DataFrame,
                     test_rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The held-out eGeMAPS under each streamed protocol; the prior is the pooled training statistics."""
    from affectflow.models.data import compute_stats

    prior = compute_stats(list(raw_egemaps(features, train_rows)), "global")
    return streamed_matrix(raw_egemaps(features, test_rows), prior, params, params.train.seed)


def svm_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str) -> pd.DataFrame:
    """The reference: eGeMAPS functionals, every corpus z-scored by its own clips' statistics (the
    held-out one by its own, unlabelled; streamed: by the clips before each), RBF SVM C=10 with
    balanced class weights."""
    from sklearn.svm import SVC

    man = training_manifest(df, train_corpora, held)
    train_rows = man[man["role"] == "source"]
    test_rows = man[man["corpus"] == held]
    clf = SVC(C=10.0, kernel="rbf", gamma="scale", class_weight="balanced")
    clf.fit(standardised_egemaps(features, train_rows), train_rows["emotion"].to_numpy())
    pred = test_rows[["utt_id", "corpus", "speaker", "emotion"]].copy()
    pred["predicted"] = clf.predict(standardised_egemaps(features, test_rows))
    for protocol, Z in streamed_egemaps(params, features, train_rows, test_rows).items():
        pred[PROTOCOLS[protocol]] = clf.predict(Z)
    return pred


def aaec_classifier_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str],
                         held: str) -> pd.DataFrame:
    """AAEC as its paper uses it: trained (augment.* settings) on the training corpora's eGeMAPS,
    each corpus z-scored by its own clips; its jointly trained classifier — emotion learnt from
    real X and synthetic X', beside the real/fake head — scores the held-out corpus (z-scored by
    its own clips, label-free; streamed: by the clips before each)."""
    from affectflow.models.aaec import train_aaec
    from affectflow.runtime.device import resolve_device

    classes = list(params.ingest.classes)
    man = training_manifest(df, train_corpora, held)
    train_rows = man[man["role"] == "source"]
    test_rows = man[man["corpus"] == held]
    y = train_rows["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    cfg = params.augment.model_copy(update={"seed": params.train.seed, "generator": "aaec"})
    model = train_aaec(standardised_egemaps(features, train_rows).astype(np.float32), y, len(classes), cfg,
                       resolve_device(cfg.device, "augment.device"))
    probs = model.emotion_probs(standardised_egemaps(features, test_rows).astype(np.float32))
    pred = test_rows[["utt_id", "corpus", "speaker", "emotion"]].copy()
    pred["predicted"] = np.asarray(classes)[probs.argmax(axis=1)]
    for protocol, Z in streamed_egemaps(params, features, train_rows, test_rows).items():
        pred[PROTOCOLS[protocol]] = np.asarray(classes)[model.emotion_probs(Z).argmax(axis=1)]
    return pred


def held_out_predictions(params: Params, model_dir: Path, manifest: Path, features: Path, held: str,
                         cell_dir: Path) -> pd.DataFrame:
    """The evaluate stage on a cell's model (the offline protocol), then the streamed protocols on
    the same model; the held-out corpus's predictions."""
    from affectflow.stages.evaluate import evaluate

    evaluate(params, model_dir, manifest, features, cell_dir / "evaluate")
    pred = pd.read_parquet(cell_dir / "evaluate" / "predictions.parquet")
    pred = pred[pred["set"] == f"cross:{held}"].reset_index(drop=True)
    pred = pred[["utt_id", "corpus", "speaker", "emotion", "predicted"]]
    return with_streamed(pred, Path(model_dir), features, list(params.studies.generalization.classes),
                         params.train.seed)


def trained_recognizer(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str,
                       cell_dir: Path, pretrained: Path | None = None,
                       synthetic: Path | None = None) -> tuple[Path, Path]:
    """The train stage on the training corpora: (the cell's manifest, the model folder)."""
    from affectflow.stages.train.stage import train

    man = training_manifest(df, train_corpora, held)
    path = cell_dir / MANIFEST_FILE
    write_manifest(man, path)
    tr = train(params, path, features, cell_dir / "train", pretrained=pretrained, synthetic=synthetic)
    return path, tr.model_dir


def recognizer_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str,
                    cell_dir: Path, pretrained: Path | None = None, synthetic: Path | None = None) -> pd.DataFrame:
    """The train stage on the training corpora, then the evaluate stage on the held-out corpus."""
    path, model_dir = trained_recognizer(params, df, features, train_corpora, held, cell_dir, pretrained, synthetic)
    return held_out_predictions(params, model_dir, path, features, held, cell_dir)


def latent_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str,
                cell_dir: Path) -> pd.DataFrame:
    """The recognizer as `recognizer_cell` trains it, then latent-feature augmentation of its head
    (new-style embeddings of the training corpora only), evaluated on the held-out corpus."""
    from affectflow.runtime.device import torch_threads
    from affectflow.stages.augment.latent import augment_latent

    path, model_dir = trained_recognizer(params, df, features, train_corpora, held, cell_dir)
    p = with_overrides(params, {"augment.seed": params.train.seed})
    # as the train stage's workers: two spin-waiting threads made the WGAN-GP ~18x slower here
    with torch_threads(params.train.threads):
        lat = augment_latent(p, model_dir, path, features, cell_dir / "latent")
    return held_out_predictions(params, lat.model_dir, path, features, held, cell_dir)


def dann_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str,
              cell_dir: Path) -> pd.DataFrame:
    """Multi-source DANN: the pretrain stage with the training corpora as labelled sources and the
    held-out corpus as the unlabelled target, then the recognizer fine-tuned from its encoder."""
    from affectflow.stages.pretrain.stage import pretrain

    man = adaptation_manifest(df, train_corpora, held)
    path = cell_dir / "adaptation.parquet"
    write_manifest(man, path)
    p = with_overrides(params, {"pretrain.target_corpora": [held], "pretrain.compare_source_only": False})
    res = pretrain(p, path, features, cell_dir / "pretrain")
    return recognizer_cell(p, df, features, train_corpora, held, cell_dir, pretrained=res.encoder_dir)


def augment_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str], held: str,
                 cell_dir: Path) -> pd.DataFrame:
    """The augment stage on the training corpora's training speakers (the held-out corpus is not in
    its manifest at all), then the recognizer trained with the kept synthetic rows."""
    from affectflow.stages.augment.stage import augment

    man = training_manifest(df, train_corpora, held)
    path = cell_dir / "augment_manifest.parquet"
    write_manifest(man[man["corpus"] != held].reset_index(drop=True), path)
    p = with_overrides(params, {"augment.seed": params.train.seed})
    res = augment(p, path, features, cell_dir / "augment", track=False)
    return recognizer_cell(p, df, features, train_corpora, held, cell_dir, synthetic=res.out_dir)


CellRunner = Callable[[Params, pd.DataFrame, Path, list[str], str, Path], pd.DataFrame]
"""(params, manifest, features, training corpora, held-out corpus, cell folder) -> the held-out
corpus's predictions."""


@dataclass(frozen=True)
class StudyMethod:
    """One `StudyCondition.method`: how a cell of it runs and the stages it runs (its cache key
    covers their sections)."""

    run: CellRunner
    stages: tuple[str, ...]
    kinds: tuple[str, ...] = ()
    """Feature kinds a cell reads besides its recognizer's (`train.model`): the ssl rows'."""


METHODS: dict[str, StudyMethod] = {
    "svm": StudyMethod(lambda p, df, f, tc, held, cell: svm_cell(p, df, f, tc, held), ("ingest", "features")),
    "recognizer": StudyMethod(recognizer_cell, ("ingest", "features", "train", "evaluate")),
    "dann": StudyMethod(dann_cell, ("ingest", "features", "pretrain", "train", "evaluate")),
    "augment": StudyMethod(augment_cell, ("ingest", "features", "augment", "train", "evaluate")),
    "latent": StudyMethod(latent_cell, ("ingest", "features", "train", "augment", "evaluate")),
    "aaec_classifier": StudyMethod(lambda p, df, f, tc, held, cell: aaec_classifier_cell(p, df, f, tc, held),
                                   ("ingest", "features", "augment", "train")),
    # rows on one layer of the ssl features outside the train stage (issue 27); train.*, pretrain.* settings
    **{m: StudyMethod(lambda p, df, f, tc, held, cell, row=row: ssl_rows.linear_cell(row, p, df, f, tc, held),
                      ("ingest", "features", "pretrain", "train"), (SSL, *([row.fused] if row.fused else [])))
       for m, row in ssl_rows.LINEAR_ROWS.items()},
    "ssl_linear_mlp_ensemble": StudyMethod(
        lambda p, df, f, tc, held, cell: ssl_rows.ensemble_cell(p, df, f, tc, held),
        ("ingest", "features", "pretrain", "train"), (SSL,)),
    **{m: StudyMethod(partial(ssl_rows.adversarial_cell, adversary), ("ingest", "features", "pretrain", "train"), (SSL,))
       for m, adversary in ssl_rows.ADVERSARY.items()},
}
"""The study's methods (the SVM reads the ingest manifest and the feature store): the one table
`StudyCondition.method` names (tests/unit/test_tables.py)."""


def run_method(method: str, params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str],
               held: str, cell_dir: Path) -> pd.DataFrame:
    return METHODS[method].run(params, df, features, train_corpora, held, cell_dir)


NOT_OUTCOME = frozenset({"s3", "paths", "tracking"})
"""Sections that say where things are, not what a cell computes."""


def outcome_sections(method: str) -> list[str]:
    """The params sections that decide a cell's outcome: those its stages read (the stage table)."""
    from affectflow.stages import get

    return sorted({s for stage in METHODS[method].stages for s in get(stage).sections} - NOT_OUTCOME)


def cell_key(method: str, params: Params, train_corpora: list[str], held: str) -> str:
    """What decides a cell's outcome (method, corpora, every section a stage of it reads): a changed
    setting is a new cell, an unchanged one (or a change to a section it does not read) is read back."""
    import hashlib

    what = {"method": method, "train": sorted(train_corpora), "held": held,
            "params": params.section_hash(*outcome_sections(method))}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]


def cached_cell(cell_dir: Path, compute: Any, classes: list[str], params: Params) -> dict[str, Any]:
    """A cell's scores (and predictions) from its folder, or computed and written there. The
    top-level scores are the offline protocol's; `protocols` holds every protocol's (a cell written
    before the streamed protocol existed is computed again)."""
    done = cell_dir / CELL_FILE
    if done.is_file():
        res = json.loads(done.read_text())
        if "protocols" in res:
            return res
    cell_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pred = compute()
    res = {**score_cell(pred, classes, params), "seconds": round(time.perf_counter() - t0, 2)}
    res["protocols"] = {name: score_cell(pred, classes, params, column) for name, column in PROTOCOLS.items()
                        if column in pred.columns}
    pred.to_parquet(cell_dir / "predictions.parquet", index=False)
    atomic_write_json(done, res)
    return res


# ----------------------------------------------------------------------------- selection
def select_candidate(name: str, cond: StudyCondition, params: Params, df: pd.DataFrame, features: Path,
                     train_corpora: list[str], out: Path, classes: list[str],
                     g: GeneralizationConfig) -> tuple[str | None, dict[str, float]]:
    """The candidate of `cond.select` with the best mean streamed UAR over inner held-out corpora (each
    training corpus in turn, trained on the others) and selection seeds; the outer held-out corpus
    is not in `df`'s play at all."""
    if not cond.select:
        return None, {}
    if len(train_corpora) < 2:
        raise StudyError(f"studies.generalization.conditions.{name}.select: needs at least 2 training corpora")
    scores = leave_one_out_scores(name, cond, params, df, features, train_corpora, classes, g,
                                  lambda held, cand: out / f"inner_{held}" / cand)
    best = max(scores, key=lambda k: scores[k])
    return best, scores


def leave_one_out_scores(name: str, cond: StudyCondition, params: Params, df: pd.DataFrame, features: Path,
                         corpora: list[str], classes: list[str], g: GeneralizationConfig,
                         folder: Callable[[str, str], Path]) -> dict[str, float]:
    """Mean UAR of each `cond.select` candidate over `corpora` held out in turn (trained on the
    others) and the selection seeds; `folder(held, candidate)` is where its cells are cached."""
    scores: dict[str, float] = {}
    for cand, over in progress(list(cond.select.items()), f"choose {name}", unit="candidate"):
        uars = []
        for held in corpora:
            rest = [c for c in corpora if c != held]
            for seed in g.selection_seeds:
                p = _with(params, {**cond.overrides, **over, "train.seed": seed, "pretrain.seed": seed},
                          f"conditions.{name}.select.{cand}")
                cell = folder(held, cand) / f"seed{seed}-{cell_key(cond.method, p, rest, held)}"
                res = cached_cell(cell, lambda p=p, rest=rest, held=held, cell=cell: run_method(
                    cond.method, p, df, features, rest, held, cell), classes, p)
                uars.append(res["protocols"].get(SELECTION_PROTOCOL, res)["uar"])
        scores[cand] = float(np.mean(uars))
    return scores


def deployment_choice(name: str, cond: StudyCondition, params: Params, df: pd.DataFrame, features: Path,
                      out: Path, classes: list[str], g: GeneralizationConfig) -> dict[str, Any]:
    """The candidate to ship: a model trained on *every* study corpus has no corpus left to test
    on, so its setting is chosen by leave-one-source-corpus-out over all of them (each candidate
    trained on all corpora but one, scored on that one; selection seeds). These are the table's own
    cells for the candidate each held-out corpus chose, so only the others are trained here. The
    table's numbers never use this choice (each held-out corpus made its own, without itself)."""
    names = [c.name for c in g.corpora]
    scores = leave_one_out_scores(name, cond, params, df, features, names, classes, g,
                                  lambda held, _cand: out / "cells" / f"heldout_{held}" / name)
    best = max(scores, key=lambda k: scores[k])
    return {"chosen": best, "settings": dict(cond.select[best]), "loso_uar": scores}


# ----------------------------------------------------------------------------- the study
def prepare(params: Params, out: Path) -> tuple[Path, Path]:
    """Ingest and features of every study corpus, once (the feature store is a cache)."""
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest

    manifest = ingest(params, out / "ingest").manifest
    extract_features(params, manifest, out / "features")
    return Path(manifest), out / "features"


def run_study(params: Params, out_dir: str | Path, conditions: list[str] | None = None) -> StudyResult:
    """Every (held-out corpus, condition, seed) cell; the table, results, PNG and one MLflow run."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    g = params.studies.generalization
    names = conditions or default_conditions(params)
    unknown = sorted(set(names) - set(g.conditions))
    if unknown:
        raise StudyError(f"studies.generalization.conditions: unknown {unknown} (known: {list(g.conditions)})")
    sp = study_params(params, out, names)
    t0 = time.perf_counter()
    manifest, features = prepare(sp, out)
    df = read_manifest(manifest)
    classes = list(g.classes)
    rows: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}
    helds = held_out_names(g)
    plan = [(h, n) for h in helds for n in names]
    for held, name in progress(plan, "generalization", unit="condition"):
        cond = g.conditions[name]
        train_corpora = [c.name for c in g.corpora if c.name != held]
        cell_root = out / "cells" / f"heldout_{held}" / name
        pool = df[df["corpus"].isin(train_corpora)]
        best, scores = select_candidate(name, cond, sp, pool, features, train_corpora, cell_root / "selection",
                                        classes, g)
        if best is not None:
            chosen[f"{held}/{name}"] = {"chosen": best, "inner_uar": scores}
        over = {**cond.overrides, **(cond.select[best] if best is not None else {})}
        seeds = [0] if cond.method == "svm" else g.seeds  # the SVM is deterministic
        for seed in seeds:
            p = _with(sp, {**over, "train.seed": seed, "pretrain.seed": seed}, f"conditions.{name}")
            cell = cell_root / f"seed{seed}-{cell_key(cond.method, p, train_corpora, held)}"
            res = cached_cell(cell, lambda p=p, cell=cell, tc=train_corpora, held=held, m=cond.method: run_method(
                m, p, df, features, tc, held, cell), classes, p)
            rows.append({"held_out": held, "condition": name, "seed": seed, "chosen": best or "", **res})
    deployment = {name: deployment_choice(name, g.conditions[name], sp, df, features, out, classes, g)
                  for name in names if g.conditions[name].select}
    summary = summarise(rows, names, helds, classes, chosen, time.perf_counter() - t0, g)
    summary["deployment"] = deployment
    table = table_md(summary)
    write_outputs(out, summary, rows, table)
    log_to_mlflow(sp, out, summary)
    return StudyResult(out, summary, table)
