"""report.md: the gate's checks for people."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from affectflow.stages.validate.gx import CheckResult


# ----------------------------------------------------------------------------- report
def _md_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        v = f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> list[str]:
    if not rows:
        return []
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def _failure_line(c: CheckResult) -> str:
    if c.error:
        return f"error: {c.error}"
    if c.unexpected_count is not None:
        line = f"{c.unexpected_count} of {c.element_count} rows"
        if c.groups is not None:
            line += f" ({c.groups} distinct {'/'.join(c.group_by or [])})"
        return line
    return f"observed {c.observed_value!r}"


def _mark(c: CheckResult) -> str:
    return "✓" if c.success else "✗" if c.severity == "critical" else "⚠"


def _md_failure(c: CheckResult, mark: str) -> list[str]:
    """One failed check: what was expected, on which table and column, and the offending rows."""
    where = f" where {c.kwargs['row_condition']}" if "row_condition" in c.kwargs else ""
    col = c.kwargs.get("column")
    lines = [f"### {mark} `{c.check}` — {c.description}", "",
             f"`{c.expectation}`" + (f" on `{col}`" if col else "")
             + f" (table `{c.table}`{where}): {_failure_line(c)}."]
    if c.examples:
        total, unit = (c.groups, "groups") if c.groups is not None else (c.unexpected_count, "rows")
        lines += ["", f"First {len(c.examples)} of {total} offending {unit}:", "", *_md_table(c.examples)]
    return lines


def render_markdown(report: dict[str, Any], checks: Sequence[CheckResult]) -> str:
    """report.md from report.json's summary and class counts and the typed `checks`."""
    s = report["summary"]
    lines = [f"# Data validation gate: {'PASSED' if s['passed'] else 'FAILED'}", ""]
    lines += [f"- manifest: `{s['manifest']}` ({s['clips']} clips, {s['speakers']} speakers)",
              f"- features: `{s['features']}`" if s["features"] else "- features: not checked",
              f"- checks: {s['checks']} run, {len(s['failed'])} failed, {len(s['warnings'])} warned",
              f"- audio: {s['audio']['checked']} files checked for existence, "
              f"{s['audio']['decoded']} opened and tail-decoded"
              + (f", {s['audio']['remote_unchecked']} remote paths not checked"
                 if s["audio"]["remote_unchecked"] else ""),
              f"- Great Expectations {report['great_expectations']}", ""]
    for title, mark, names in (("Failed checks", "✗", s["failed"]),
                               ("Warnings (do not fail the gate)", "⚠", s["warnings"])):
        if names:
            lines += [f"## {title}", ""]
        for c in (c for c in checks if c.check in names):
            lines += [*_md_failure(c, mark), ""]
    counts = report["class_counts"]
    if counts:
        classes = list(next(iter(counts.values())).keys())
        lines += ["## Labelled clips per split and class", ""]
        lines += _md_table([{"split": sp, **row} for sp, row in counts.items()], ["split", *classes])
        lines.append("")
    lines += ["## All checks", ""]
    lines += _md_table([{"": _mark(c), "check": c.check, "table": c.table, "expectation": c.expectation,
                         "unexpected / observed": c.unexpected_count if c.unexpected_count is not None
                         else c.observed_value} for c in checks])
    return "\n".join(lines) + "\n"


def _first_example(c: CheckResult) -> str:
    ex: Iterable[dict[str, Any]] = c.examples or []
    first = next(iter(ex), None)
    if not first:
        return ""
    return ", e.g. " + ", ".join(f"{k}={v}" for k, v in first.items())
