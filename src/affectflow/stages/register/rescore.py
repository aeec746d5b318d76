"""Stage — rescore (the register tail's first step): the champion scored on the challenger's test
manifest, so a retrained model can be promoted on new data.

When the corpus grows, the new run's test manifest differs from the one the champion was scored
on, and the two UARs are not comparable. This step fetches the champion's model folder back from
MLflow (its training run's `model_folder` artifacts, else the registered pyfunc's copy), checks
that it is the registered model (content hash), and scores it with the evaluate stage's own code
and settings (reached through the stage table: `StageSpec.uses`) on the challenger's manifest and
feature store. The register step records the scores on the versions and gates both on that one
set (`affectflow.stages.register.stage.record_rescore`).

Test speakers the champion trained on (or picked its checkpoint on) cannot score it fairly: a
grown corpus deals speakers into folds afresh. They are left out of the comparison set, and the
challenger is scored on that same reduced set too. Nothing is done when there is no champion or it
already has scores on this test manifest (its own, or a re-score recorded earlier).

Output folder: `plan.json` (`RescorePlan`: what was decided and why),
`report.md`, `champion/` (evaluate's output for the champion), `challenger/` (only on a reduced
set), `champion_model/` (the fetched folder), `comparison/manifest.parquet` (only on a reduced set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.evaluation import Evaluation, EvaluationMismatch, check_evaluation, read_evaluation
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import ModelMeta, content_hash, read_model_meta
from affectflow.stages import get
from affectflow.stages.register.plan import CHALLENGER_SCORES, CHAMPION_SCORES, PLAN_FILE, RescorePlan
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_write_json, atomic_write_text
from affectflow.tracking.registry import CHAMPION, CONTENT_HASH_TAG, Registry, RegistryError
from affectflow.tracking.uri import mlflow_scope

MODEL_FOLDER_ARTIFACT = "model_folder"
"""Where `affectflow.tracking.runs.log_training` logs the model folder in the training run."""
CHAMPION_MODEL = "champion_model"
COMPARISON = "comparison"
EVALUATION_ERRORS = (ValueError, KeyError, FileNotFoundError)
"""Failures of evaluate on a champion it cannot score here (another feature kind or configuration
than this run's store holds, no shared test rows): reported as "not comparable", not a failed run."""


@dataclass
class RescoreResult:
    out_dir: Path
    plan: RescorePlan

    @property
    def summary(self) -> dict[str, Any]:
        return self.plan.to_json()


def fetch_champion(reg: Registry, version: str, dest: str | Path) -> Path:
    """The champion's model folder under `dest`, checked against the version's content hash."""
    import mlflow

    mv = reg.get(version)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folder: Path | None = None
    errors: list[str] = []
    with mlflow_scope(reg.client.tracking_uri):
        if mv.run_id:
            try:
                folder = Path(reg.client.download_artifacts(mv.run_id, MODEL_FOLDER_ARTIFACT, str(dest / "run")))
            except Exception as e:  # run deleted or folder never logged: try the registered pyfunc
                errors.append(f"run {mv.run_id} artifact {MODEL_FOLDER_ARTIFACT!r}: {e}")
        if folder is None or not (folder / "model.json").is_file():
            try:
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{reg.name}/{version}",
                                                               dst_path=str(dest / "pyfunc")))
                found = sorted(got.rglob("model.json"))
                folder = found[0].parent if found else None
                if folder is None:
                    errors.append(f"models:/{reg.name}/{version}: no model folder (model.json) inside")
            except Exception as e:
                errors.append(f"models:/{reg.name}/{version}: {e}")
    if folder is None or not (folder / "model.json").is_file():
        raise RegistryError(f"model {reg.name!r} v{version}: cannot fetch its model folder ({'; '.join(errors)})")
    registered = mv.tags.get(CONTENT_HASH_TAG)
    got_hash = content_hash(folder)
    if registered and registered != got_hash:
        raise EvaluationMismatch(f"model {reg.name!r} v{version} is registered as model {registered[:12]}, but "
                                 f"the folder fetched from MLflow ({folder}) is {got_hash[:12]}")
    return folder


def comparison_rows(df: Any, champion: ModelMeta, challenger: ModelMeta) -> tuple[Any, list[str]]:
    """The manifest with the test rows both models may be scored on; the test speakers left out.

    Left out: test speakers the champion trained or validated on, and test rows of corpora only one
    of the two was trained on (evaluate scores a model on its own training corpora's test split)."""
    champ_corpora = set(champion.train.corpora) or set(df["corpus"])
    chal_corpora = set(challenger.train.corpora) or set(df["corpus"])
    seen = set(champion.train.train_speakers) | set(champion.train.val_speakers)
    test = df["split"] == "test"
    excluded = sorted(set(df.loc[test & df["speaker"].isin(seen), "speaker"]))
    drop = test & (df["speaker"].isin(seen) | ~df["corpus"].isin(champ_corpora & chal_corpora))
    return df[~drop].reset_index(drop=True), excluded


def _plan(out: Path, plan: RescorePlan, lines: list[str]) -> RescorePlan:
    atomic_write_json(out / PLAN_FILE, plan.to_json())
    atomic_write_text(out / "report.md", "\n".join(["# Champion re-score", "", *lines, ""]))
    return plan


def _evaluate(params: Params, model_dir: Path, manifest: Path, features: str | Path, out: Path) -> Evaluation:
    """The evaluate stage's own scoring, into a new MLflow run (a re-score must not overwrite the
    model's own evaluation in its training run)."""
    evaluate = get("evaluate").function("evaluate")
    return evaluate(params, model_dir, manifest, features, out, log_to_model_run=False)  # type: ignore[no-any-return]


def rescore(params: Params, manifest: str | Path, features: str | Path, model_dir: str | Path,
            evaluation: str | Path, out_dir: str | Path, *, client: Any = None) -> RescorePlan:
    """Score the champion on the challenger's test manifest when it has no scores there yet."""
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reg = Registry(params, client)
    scored = read_evaluation(evaluation)
    identity = check_evaluation(scored, evaluation, model_dir)  # the challenger's metrics are its own
    test_hash = scored.test.test_manifest_hash
    champion = reg.alias_version(CHAMPION)
    base = {"challenger_test_manifest_hash": test_hash, "champion_version": champion}
    if champion is None:
        return _plan(out, RescorePlan(False, "no champion yet: nothing to compare with", **base),
                     ["No champion yet: the challenger is gated on its own scores."])
    if reg.scores_on(champion, test_hash) is not None:
        why = f"champion v{champion} already has scores on test manifest {test_hash}"
        return _plan(out, RescorePlan(False, why, **base), [why + ": no re-score needed."])

    try:
        champ_dir = fetch_champion(reg, champion, out / CHAMPION_MODEL)
    except (RegistryError, EvaluationMismatch) as e:  # a fetched folder that is not the registered model: refused
        why = f"champion v{champion} cannot be re-scored: {e}"
        return _plan(out, RescorePlan(False, why, **base), [why])
    champ_hash = content_hash(champ_dir)
    base["champion_content_hash"] = champ_hash
    if champ_hash == identity.content_hash:
        why = f"the challenger is champion v{champion} itself (same model content)"
        return _plan(out, RescorePlan(False, why, **base), [why + "."])
    champ_meta, chal_meta = read_model_meta(champ_dir), read_model_meta(model_dir)
    if list(champ_meta.classes) != list(chal_meta.classes):
        why = (f"champion v{champion} classes {champ_meta.classes} differ from the challenger's "
               f"{chal_meta.classes}: UARs over different classes are not comparable")
        return _plan(out, RescorePlan(False, why, **base), [why + "."])

    df = read_manifest(manifest)
    rows, excluded = comparison_rows(df, champ_meta, chal_meta)
    reduced = len(rows) != len(df)
    target = Path(manifest)
    if reduced:
        target = out / COMPARISON / "manifest.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(rows, target)
    p = params.model_copy(deep=True)
    p.evaluate.cross_corpus = []  # the gate compares test-split scores only
    tags = {"stage": "rescore", "champion_version": champion, "challenger_test_manifest_hash": test_hash}
    try:
        with tracking.start_run(p, f"rescore-champion-v{champion}", tags=tags, log_params=False):
            champ = _evaluate(p, champ_dir, target, features, out / CHAMPION_SCORES)
            chal = _evaluate(p, Path(model_dir), target, features, out / CHALLENGER_SCORES) if reduced else None
    except EVALUATION_ERRORS as e:
        why = f"champion v{champion} cannot be scored on this run's data: {e}"
        return _plan(out, RescorePlan(False, why, excluded_speakers=tuple(excluded), **base), [why])
    compared = champ.test.test_manifest_hash
    if chal is not None and chal.test.test_manifest_hash != compared:
        raise RegistryError(f"{out}: champion and challenger were scored on different rows "
                            f"({compared}, {chal.test.test_manifest_hash})")
    plan = RescorePlan(True, f"champion v{champion} was scored on another test manifest; re-scored on {compared}",
                       comparison_test_manifest_hash=compared, excluded_speakers=tuple(excluded),
                       challenger_rescored=chal is not None, **base)
    c = champ.test
    lines = [f"Champion **v{champion}** (model `{champ_hash[:12]}`) had no scores on the challenger's test "
             f"manifest `{test_hash}`; scored now with the evaluate stage on {c.n} test clips "
             f"(test manifest `{compared}`).", "",
             "| model | UAR | WA | macro-F1 |", "|---|---|---|---|",
             f"| champion v{champion} | {c.uar:.4f} | {c.wa:.4f} | {c.macro_f1:.4f} |"]
    if chal is not None:
        h = chal.test
        lines.append(f"| challenger | {h.uar:.4f} | {h.wa:.4f} | {h.macro_f1:.4f} |")
        lines += ["", f"Left out of the comparison: test speakers the champion trained or validated on "
                      f"({', '.join(excluded) or 'none'}); the challenger is scored on the same reduced set."]
    else:
        lines += ["", f"The challenger's own evaluation is on this same set (UAR {scored.test.uar:.4f})."]
    return _plan(out, plan, lines)


def run(params: Params, inputs: Inputs, out_dir: Path) -> RescoreResult:
    return RescoreResult(Path(out_dir), rescore(params, inputs["manifest"], inputs["features"], inputs["model"],
                                                inputs["evaluation"], out_dir))
