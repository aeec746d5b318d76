"""What a Kubeflow task shows in the UI: Metrics scalars, a confusion matrix, Markdown and
self-contained HTML reports (plots inlined), built from a stage's own files and typed results.

The evaluation is read through its contract (`affectflow.contracts.evaluation`); the register
tail's outcome through its typed results (`affectflow.stages.register.result`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from affectflow.contracts.evaluation import Evaluation
from affectflow.storage import atomic_write_json, atomic_write_text


def scalars(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) summary as flat `a.b` keys: what a Metrics artifact can hold."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(scalars(value, name))
        elif isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out[name] = float(value)
    return out


def log_metrics(artifact: Any, summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Log every scalar of `summary` on a KFP Metrics artifact and write them as JSON at its path.

    The file matters: kfp.local's cache treats an artifact whose file is missing as a cache miss,
    and a Metrics artifact otherwise lives only in the executor's metadata.
    """
    values = scalars(summary, prefix)
    for name, value in values.items():
        artifact.log_metric(name, value)
    atomic_write_json(artifact.path, values)
    return values


def log_confusion(artifact: Any, classes: Sequence[str], matrix: Sequence[Sequence[int | float]]) -> None:
    """A KFP ClassificationMetrics confusion matrix (the UI draws it) plus a JSON copy at its path."""
    rows = [[round(float(v)) for v in row] for row in matrix]
    artifact.log_confusion_matrix(list(classes), rows)
    atomic_write_json(artifact.path, {"classes": list(classes), "matrix": rows})


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping | list | tuple):
        text = json.dumps(v, default=str)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(v)


def summary_markdown(title: str, summary: Mapping[str, Any], intro: str = "") -> str:
    """A stage summary as a Markdown table of its top-level fields."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| field | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v).replace('|', '/')} |" for k, v in summary.items()]
    return "\n".join(lines) + "\n"


def write_markdown(artifact: Any, text: str) -> None:
    atomic_write_text(artifact.path, text)


_IMG_SRC = re.compile(r'(<img[^>]*\bsrc=")([^"]+)(")')


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def markdown_to_html(title: str, markdown_text: str, base_dir: str | Path | None = None,
                     images: Iterable[str | Path] = ()) -> str:
    """A self-contained HTML page: Markdown rendered, PNGs it links (relative to `base_dir`) inlined,
    and any further `images` appended — the Kubeflow UI shows HTML artifacts as they are."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    inlined: set[Path] = set()

    def inline(m: re.Match[str]) -> str:
        if base_dir is None or "://" in m.group(2) or m.group(2).startswith("data:"):
            return m.group(0)
        path = (Path(base_dir) / m.group(2)).resolve()
        if not path.is_file():
            return m.group(0)
        inlined.add(path)
        return m.group(1) + _data_uri(path) + m.group(3)

    body = _IMG_SRC.sub(inline, body)
    extra = [Path(p).resolve() for p in images]
    figures = "".join(
        f'<figure><img src="{_data_uri(p)}" alt="{html.escape(p.name)}"><figcaption>{html.escape(p.name)}'
        f"</figcaption></figure>" for p in extra if p.is_file() and p not in inlined)
    style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}{figures}</body></html>\n")


def write_html(artifact: Any, title: str, markdown_text: str, base_dir: str | Path | None = None,
               images: Iterable[str | Path] = ()) -> None:
    """The page at the artifact's path. A local artifact (kfp.local) gets an `.html` name, so the
    file opens in a browser from the task folder; a cluster artifact keeps the launcher's URI (the
    Kubeflow UI renders it by type)."""
    uri = getattr(artifact, "uri", None)
    if uri and "://" not in uri and not uri.endswith(".html"):
        artifact.uri = f"{uri}.html"
    atomic_write_text(artifact.path, markdown_to_html(title, markdown_text, base_dir, images))


def report_text(folder: str | Path, name: str = "report.md", fallback: str = "") -> str:
    """A stage's own Markdown report when it wrote one, else `fallback`."""
    path = Path(folder) / name
    return path.read_text() if path.is_file() else fallback


def pngs(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).rglob("*.png"))



def gate_outcome(res: Any, summary: Any, report: Any) -> bool:
    """A validate task's artifacts from its GateResult; a failed gate fails the task (and the run)."""
    log_metrics(summary, res.summary)
    text = Path(res.report_md).read_text()
    write_markdown(report, text)
    if not res.passed:
        raise RuntimeError(f"validation gate failed; report: {res.report_md}\n{text}")
    return bool(res.passed)


def evaluation_metrics(evaluation: Evaluation) -> dict[str, Any]:
    """What the Metrics panel shows: the test set's UAR / WA / macro-F1 with intervals, per-class
    recall, and each held-out corpus's UAR / WA / macro-F1; not the confusion matrix nor the
    per-speaker tables (those are in the report)."""
    t = evaluation.test
    out: dict[str, Any] = {k: getattr(t, k) for k in (
        "uar", "uar_ci_low", "uar_ci_high", "wa", "wa_ci_low", "wa_ci_high",
        "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high") if getattr(t, k) is not None}
    out["per_class_recall"] = t.recalls()
    if evaluation.cross_corpus:
        out["cross_corpus"] = {name: {"uar": r.uar, "wa": r.wa, "macro_f1": r.macro_f1}
                               for name, r in evaluation.cross_corpus.items()}
        out["cross_corpus_mean_uar"] = evaluation.cross_corpus_mean_uar
    return out


def confusion_of(evaluation: Evaluation) -> tuple[list[str], list[list[int]]]:
    """(classes, rows = true class, columns = predicted) of the test set."""
    t = evaluation.test
    n = len(t.classes)
    if not n or len(t.confusion) != n or any(len(r) != n for r in t.confusion):
        raise ValueError(f"evaluation of {evaluation.model.describe()}: field 'test.confusion' is not a "
                         f"{n}x{n} matrix over 'test.classes'")
    return list(t.classes), [list(r) for r in t.confusion]


def registry_markdown(title: str, result: Mapping[str, Any]) -> str:
    """Registration / promotion outcome for the Kubeflow UI: the decision and its reason first,
    then both scores on the one test set they were compared on."""
    gate = result.get("gate") or {}
    intro = ""
    if gate:
        verdict = "promoted" if result.get("promoted") else ("gate passed" if gate.get("passed") else "not promoted")
        intro = f"**{verdict.capitalize()}**: {gate.get('reason', '')}"
    if result.get("note"):
        intro += f"\n\n{result['note']}"
    if gate.get("champion_uar") is not None or gate.get("challenger_uar") is not None:
        def cell(x: Any) -> str:
            return "—" if x is None else f"{float(x):.4f}"
        champ = gate.get("champion_version")
        intro += ("\n\n| compared on test manifest | challenger UAR | champion" + (f" v{champ}" if champ else "")
                  + " UAR | champion re-scored |\n|---|---|---|---|\n"
                  + f"| `{gate.get('test_manifest_hash')}` | {cell(gate.get('challenger_uar'))} | "
                  + f"{cell(gate.get('champion_uar'))} | {'yes' if gate.get('rescored') else 'no'} |")
    if result.get("guard"):  # registry.guard_corpora: the per-corpus table (tracking/guard.py)
        from affectflow.tracking.guard import GuardDecision

        intro += "\n\n" + GuardDecision.from_json(result["guard"]).markdown()
    keep = ("model_uri", "aliases", "champion", "previous_champion", "promoted", "forced", "already_registered",
            "model_content_hash", "data_version", "comparison", "metrics", "lineage", "tracking_uri")
    heading = f"{title}: {result.get('model_name', '')} v{result.get('version', '?')}"
    return summary_markdown(heading, {k: result[k] for k in keep if k in result and result[k] is not None}, intro)
