"""The dimensional scores in the registry and the model card: read through the evaluation contract's
typed `dimensions` section (`contracts.evaluation.DimensionScores`, written by
`stages/evaluate_dimensions.py`) and the model folder's `dimensions` facts.

Every place that shows a CCC shows the `weak_labels` flag beside it: CCC against weak labels
(categorical label -> Russell circumplex point) measures how well clips are ordered by their
class's typical arousal / valence, not agreement with perceived affect.
"""

from __future__ import annotations

from affectflow.contracts.evaluation import DimensionScore, DimensionScores
from affectflow.contracts.model_folder import ModelMeta

TAGS = ("ccc_arousal", "ccc_valence", "ccc_dominance", "weak_labels")
"""Version tags the registry sets from the test set's dimensional scores (shown in `registry list`)."""
SECTION = "Dimensions (arousal / valence)"


def version_tags(dims: DimensionScores | None) -> dict[str, str]:
    """`ccc_<dimension>` of the test set and `weak_labels` (true / false), or {} without dimensions."""
    if dims is None:
        return {}
    tags = {f"ccc_{name}": f"{ccc:.4f}" for name, ccc in dims.test_ccc().items()}
    return {**tags, "weak_labels": "true" if dims.weak_labels else "false"}


def _cell(r: DimensionScore) -> str:
    if r.ccc is None:
        return "—"
    return f"{r.ccc:.3f} [{r.ccc_ci_low:.3f}, {r.ccc_ci_high:.3f}]"


def card_lines(meta: ModelMeta, dims: DimensionScores | None) -> list[str]:
    """The model card's section body."""
    facts = meta.dimensions
    if facts is None:
        return ["No dimensional head: this model gives class probabilities only.", ""]
    sources = "; ".join(f"{c}: " + ", ".join(f"{d} {s}" for d, s in per.items()) for c, per in facts.sources.items())
    lines = [f"Outputs {', '.join(facts.names)} on [-1, 1] (-1 low arousal / unpleasant, +1 high arousal / "
             f"pleasant), trained jointly with the classes (loss weight {facts.loss_weight:g}, 1 - CCC).",
             f"Training targets: {sources or 'not recorded'}.", ""]
    if facts.weak_labels:
        lines += ["**weak_labels: true** — targets of the corpora marked *weak* are not annotations: each clip "
                  "gets its class's point on Russell's (1980) circumplex (RAVDESS: arousal moved by its "
                  "normal / strong intensity). Read the outputs as where a clip sits between the classes' typical "
                  "arousal and valence; the CCC below says how well clips are ordered that way, not how well "
                  "perceived affect is matched.", ""]
    if dims is None or not dims.sets:
        return [*lines, "No dimensional scores in this evaluation.", ""]
    lines += [f"Concordance correlation coefficient (CCC) with {round(dims.ci_level * 100)} % bootstrap "
              f"intervals; weak_labels of the scored targets: {str(dims.weak_labels).lower()}.", "",
              "| set | dimension | n | CCC [CI] | per corpus |", "|---|---|---|---|---|"]
    for set_name, entry in dims.sets.items():
        for name, r in entry.items():
            per = ", ".join(f"{c} {pc.ccc:.3f}" for c, pc in r.per_corpus.items() if pc.ccc is not None)
            lines.append(f"| {set_name} | {name} | {r.n} | {_cell(r)} | {per} |")
    return [*lines, ""]
