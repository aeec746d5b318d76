"""Running the tables' expectations with Great Expectations (in memory) and describing each
result: the check, its severity, the offending rows."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before GX is imported: no usage events

import great_expectations as gx
import numpy as np
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.expectation import Expectation

from affectflow.stages.validate.tables import IDS_PER_GROUP, Table

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- running GX
def _context() -> Any:
    """One in-memory GX context per gate run: nothing on disk, no progress bars, no analytics."""
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


@dataclass
class CheckResult:
    """One check's outcome: what `report.json` lists per check (`as_json`) and `report.md` shows."""

    check: str
    description: str
    table: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    element_count: int | None
    unexpected_count: int | None
    severity: str
    error: str | None
    observed: tuple[Any] | None = None
    """(GX's observed value,) when it reported one (the value itself may be None)."""
    groups: int | None = None
    """Distinct offending groups, when the check groups its rows (`group_by`)."""
    examples: list[dict[str, Any]] | None = None
    """The first offending rows or groups, when the check failed on rows."""
    group_by: list[str] | None = None

    @property
    def critical_failure(self) -> bool:
        return not self.success and self.severity == "critical"

    @property
    def warning(self) -> bool:
        return not self.success and self.severity != "critical"

    @property
    def observed_value(self) -> Any:
        return None if self.observed is None else self.observed[0]

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "check": self.check, "description": self.description, "table": self.table,
            "expectation": self.expectation, "kwargs": self.kwargs, "success": self.success,
            "element_count": self.element_count, "unexpected_count": self.unexpected_count,
            "severity": self.severity, "error": self.error}
        if self.observed is not None:
            d["observed_value"] = self.observed[0]
        if self.examples is not None:
            d["groups"], d["examples"] = self.groups, self.examples
            if self.groups is not None:
                d["group_by"] = self.group_by
        return d


def run_tables(tables: Sequence[Table], n_examples: int) -> list[CheckResult]:
    """Validate every table with its suite; one result per check, in the order the checks were declared."""
    with contextlib.redirect_stdout(io.StringIO()) as said:  # GX prints bare lists ("[]") to stdout
        out = _run_suites(tables, n_examples)
    if said.getvalue().strip():
        log.debug("great expectations: %s", said.getvalue().strip())
    return out


def _run_suites(tables: Sequence[Table], n_examples: int) -> list[CheckResult]:
    context = _context()
    source = context.data_sources.add_pandas("affectflow")
    out: list[CheckResult] = []
    for t in tables:
        batch = source.add_dataframe_asset(t.name).add_batch_definition_whole_dataframe(t.name)
        suite = context.suites.add(gx.ExpectationSuite(name=t.name, expectations=t.expectations))
        vd = context.validation_definitions.add(gx.ValidationDefinition(name=t.name, data=batch, suite=suite))
        res = vd.run(batch_parameters={"dataframe": t.df},
                     result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [t.id_column]})
        by_check = {r.expectation_config.meta["check"]: r for r in res.results}
        out += [_describe(t, e, by_check[e.meta["check"]], n_examples) for e in t.expectations]
    return out


def _exception(info: Any) -> str | None:
    """GX reports exceptions either flat or keyed by metric; return the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for sub in info.values():
        if isinstance(sub, dict) and sub.get("raised_exception"):
            return str(sub.get("exception_message"))
    return None


def _describe(t: Table, exp: Expectation, res: Any, n_examples: int) -> CheckResult:
    cfg = res.expectation_config
    r = res.result or {}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "row_condition")}
    if getattr(exp, "row_condition", None) is not None:
        kwargs["row_condition"] = repr(exp.row_condition)  # "role == source"
    c = CheckResult(
        check=exp.meta["check"], description=exp.description, table=t.name, expectation=cfg.type,
        kwargs=_plain(kwargs), success=bool(res.success), element_count=_plain(r.get("element_count")),
        unexpected_count=_plain(r.get("unexpected_count")), severity=_plain(getattr(exp.severity, "value", exp.severity)),
        error=_exception(res.exception_info),
        observed=(_plain(r["observed_value"]),) if "observed_value" in r else None)
    ids = [row[t.id_column] for row in r.get("unexpected_index_list") or []]
    if not res.success and ids:
        c.groups, c.examples = _examples(t, kwargs.get("column"), ids, exp.meta, n_examples)
        if c.groups is not None:
            c.group_by = list(exp.meta["group"])
    return c


def _examples(t: Table, column: str | None, ids: Sequence[Any], meta: dict[str, Any],
              n: int) -> tuple[int | None, list[dict[str, Any]]]:
    """Up to `n` offending rows (or groups of rows) with the columns that explain them."""
    bad = t.df[t.df[t.id_column].isin(set(ids))]
    group: list[str] = meta.get("group") or []
    cols = list(dict.fromkeys([*meta.get("show", []), *([column] if column else [])]))
    if not group:
        rows = bad[[t.id_column, *[c for c in cols if c != t.id_column]]].head(n)
        return None, _plain(rows.to_dict("records"))
    agg: dict[str, Any] = {"rows": (t.id_column, "size")}
    agg.update({c: (c, "first") for c in cols if c not in group and c != t.id_column})
    agg[f"{t.id_column}s"] = (t.id_column, lambda s: ", ".join(str(v) for v in s.head(IDS_PER_GROUP))
                              + (", …" if len(s) > IDS_PER_GROUP else ""))
    grouped = bad.groupby(group, dropna=False, sort=True).agg(**agg).reset_index()
    return len(grouped), _plain(grouped.head(n).to_dict("records"))


def _plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN to None, unknown objects to str."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
