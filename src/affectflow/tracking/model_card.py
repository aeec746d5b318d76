"""The model card of a registered version: what the model is, what it was trained and scored on,
how sure it is entitled to be, where it fails and what it is not for (Mitchell et al. 2019,
"Model cards for model reporting").

Built only from the model folder's `model.json` and the evaluation's `metrics.json` that the
registry already checked belong together, so every figure in it is one the pipeline measured;
the register stage writes it next to `result.json` and logs it with the model's MLflow run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affectflow.contracts.evaluation import Evaluation
from affectflow.contracts.model_folder import ModelFolderError, ModelMeta, read_model_meta
from affectflow.corpora.facts import facts_for
from affectflow.storage import atomic_write_text
from affectflow.tracking import dimensions as dimension_card

SECTIONS = ("Model", "Training data", "Scores", "Calibration", dimension_card.SECTION, "Known weak classes",
            "Intended use and limits", "How it was chosen")
"""The card's headings, in order (a test checks each is present)."""
WEAK_MARGIN = 0.10
"""A class is weak when its test recall is this far below the model's UAR (or below chance)."""


def _ci(r: Mapping[str, Any], name: str) -> str:
    lo, hi = r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
    value = f"{r[name]:.3f}"
    return value if lo is None or hi is None else f"{value} [{lo:.3f}, {hi:.3f}]"


def _group_table(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not groups:
        return []
    return [f"**{title}**", "", "| group | n | UAR [CI] | WA | macro-F1 |", "|---|---|---|---|---|",
            *(f"| {k} | {v['n']} | {_ci(v, 'uar')} | {v['wa']:.3f} | {v['macro_f1']:.3f} |" for k, v in groups.items()),
            ""]


def _scores(metrics: Mapping[str, Any]) -> list[str]:
    t = metrics["test"]
    level = f"{round(t['ci_level'] * 100)} % " if t.get("ci_level") else ""
    lines = [f"Test: {t.get('scope', 'test split')}, {t['n']} clips of speakers never seen in training. "
             f"Intervals: {level}percentile bootstrap over clips.", "",
             "| set | n | UAR [CI] | WA [CI] | macro-F1 [CI] |", "|---|---|---|---|---|",
             f"| test | {t['n']} | {_ci(t, 'uar')} | {_ci(t, 'wa')} | {_ci(t, 'macro_f1')} |"]
    for name, r in (metrics.get("cross_corpus") or {}).items():
        lines.append(f"| held-out corpus {name} | {r['n']} | {_ci(r, 'uar')} | {_ci(r, 'wa')} | {_ci(r, 'macro_f1')} |")
    lines += ["", *_group_table("Per corpus (test split)", t.get("per_corpus") or {}),
              *_group_table("Per gender (test split)", t.get("per_gender") or {}),
              "**Per class (test recall)**", "", "| class | recall |", "|---|---|",
              *(f"| {c} | {'—' if r is None else f'{r:.3f}'} |" for c, r in t["per_class_recall"].items()), ""]
    return lines


def _calibration(meta: ModelMeta, metrics: Mapping[str, Any]) -> list[str]:
    cal = meta.calibration
    if cal is None:
        return ["Not calibrated: probabilities are the plain softmax (the run had no validation speakers to fit a "
                "temperature on); treat them as rankings, not as chances.", ""]
    lines = [f"Temperature scaling, T = {cal.temperature:.3f}, fitted on {cal.n} clips ({cal.fitted_on}). "
             "Expected calibration error (15 bins) of the top label, plain softmax -> calibrated:", "",
             "| set | ECE softmax | ECE calibrated | mean confidence | accuracy |", "|---|---|---|---|---|"]
    sets = {"test": metrics["test"], **{f"held-out {k}": v for k, v in (metrics.get("cross_corpus") or {}).items()}}
    for name, r in sets.items():
        c = r.get("calibration")
        if c:
            lines.append(f"| {name} | {c['ece_before']:.3f} | {c['ece_after']:.3f} | {c['mean_confidence_after']:.3f} "
                         f"| {c['accuracy']:.3f} |")
    return [*lines, ""]


def weak_classes(metrics: Mapping[str, Any]) -> list[str]:
    """Classes whose test recall is `WEAK_MARGIN` below the UAR or at most chance, weakest first."""
    t = metrics["test"]
    chance = t.get("chance_uar", 0.0)
    recalls = {c: r for c, r in t["per_class_recall"].items() if r is not None}
    weak = [c for c, r in recalls.items() if r <= t["uar"] - WEAK_MARGIN or r <= chance]
    return sorted(weak, key=lambda c: recalls[c])


def _weak(metrics: Mapping[str, Any]) -> list[str]:
    t = metrics["test"]
    weak = weak_classes(metrics)
    lines = ([f"- **{c}**: test recall {t['per_class_recall'][c]:.3f} (UAR {t['uar']:.3f})" for c in weak]
             or [f"- none on the test split (every class recall within {WEAK_MARGIN:.2f} of the UAR)"])
    for name, r in (metrics.get("cross_corpus") or {}).items():
        bad = [c for c, v in r["per_class_recall"].items() if v is not None and v <= r.get("chance_uar", 0.0)]
        if bad:
            lines.append(f"- on held-out {name}: {', '.join(bad)} at or below chance")
    if t.get("collapse", {}).get("collapsed"):
        lines.append("- **collapse**: " + "; ".join(t["collapse"]["reasons"]))
    return [*lines, ""]


def _limits(meta: ModelMeta, metrics: Mapping[str, Any]) -> list[str]:
    langs = sorted({f.language for c in meta.train.corpora if (f := facts_for(c))})
    unknown = [c for c in meta.train.corpora if facts_for(c) is None]
    lines = ["Intended use: research and prototyping of speech emotion recognition on short clips of one speaker "
             f"(classes: {', '.join(meta.classes)}); long recordings through `affectflow predict --timeline`.", "",
             "Limits:",
             f"- Languages covered: {', '.join(langs) or 'not recorded'}"
             + (f" (and {', '.join(unknown)}: language not recorded)" if unknown and langs else "") + ".",
             "- Trained on acted emotion (actors portraying emotions on fixed sentences), not on spontaneous speech; "
             "scores on natural conversation are expected to be lower and are not measured here.",
             "- Not for decisions about a person (hiring, health, policing, credit): an emotion label is an "
             "estimate of how speech sounds, not of what someone feels."]
    if metrics["test"].get("synthetic_data"):
        lines.append("- **Trained and scored on SYNTHETIC demo audio**: the figures only show that the pipeline runs.")
    return [*lines, ""]


def _chosen(meta: ModelMeta, decision: Mapping[str, Any] | None) -> list[str]:
    tf = meta.train
    lines = [f"- Checkpoint: epoch {tf.best_epoch} of {tf.epochs_run} by validation UAR "
             f"({'n/a' if tf.val_uar is None else f'{tf.val_uar:.3f}'}) on {len(tf.val_speakers)} validation speakers"
             f"{', stopped early' if tf.stopped_early else ''}; the test split played no part."]
    if tf.latent_augmentation:
        lines.append("- Head retrained with latent-feature augmentation (see model.json `train.latent_augmentation`).")
    if decision is not None:
        lines.append(f"- Registry gate: {'passed' if decision.get('passed') else 'not passed'} — {decision.get('reason', '')}")
    return [*lines, ""]


def model_card(meta: ModelMeta, evaluation: Evaluation, *, title: str,
               decision: Mapping[str, Any] | None = None) -> str:
    """The card as Markdown."""
    metrics = evaluation.to_json()
    tf = meta.train
    corpora = [f"- {c}: {f.language}, {f.speech}" if (f := facts_for(c)) else f"- {c}: language and speech type not recorded"
               for c in meta.train.corpora]
    lines = [f"# Model card: {title}", "",
             "## Model", "",
             f"{meta.arch} on `{meta.feature}` features; classes: {', '.join(meta.classes)}; "
             f"model content hash `{metrics.get('model', {}).get('content_hash', '')[:12]}`.", "",
             "## Training data", "", *corpora, "",
             f"{tf.n_train} training clips from {len(tf.train_speakers)} speakers, {tf.n_val} validation clips from "
             f"{len(tf.val_speakers)} other speakers" + (f", {tf.n_synthetic} synthetic" if tf.n_synthetic else "")
             + ".", "",
             "## Scores", "", *_scores(metrics),
             "## Calibration", "", *_calibration(meta, metrics),
             f"## {dimension_card.SECTION}", "", *dimension_card.card_lines(meta, evaluation.dimensions),
             "## Known weak classes", "", *_weak(metrics),
             "## Intended use and limits", "", *_limits(meta, metrics),
             "## How it was chosen", "", *_chosen(meta, decision)]
    return "\n".join(lines)


CARD_FILE = "model_card.md"
DESCRIPTION_LIMIT = 5000
"""MLflow keeps a version description of at most this many characters (the SQL column)."""


def publish_card(client: Any, name: str, version: str, model_dir: str | Path, evaluation: Evaluation,
                 out_dir: str | Path, run_id: str | None,
                 decision: Mapping[str, Any] | None) -> tuple[Path | None, str | None]:
    """Write `<out_dir>/model_card.md`, log it into the model's MLflow run (`model_card/`) and make it
    the registered version's description (cut to MLflow's limit, pointing at the full file).
    (path, None), or (None, why) when model.json lacks what a card is made of (a folder from
    before these fields): registering still works, without a card."""
    try:
        meta = read_model_meta(model_dir)
    except ModelFolderError as e:
        return None, f"{e}: no model card"
    card = model_card(meta, evaluation, title=f"{name} v{version}", decision=decision)
    path = Path(out_dir) / CARD_FILE
    atomic_write_text(path, card)
    if run_id:
        client.log_artifact(run_id, str(path), artifact_path="model_card")
    more = f"\n\n… (cut: the full card is the run's artifact model_card/{CARD_FILE})"
    text = card if len(card) <= DESCRIPTION_LIMIT else card[:DESCRIPTION_LIMIT - len(more)] + more
    client.update_model_version(name, version, description=text)
    return path, None
