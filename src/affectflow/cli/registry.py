"""`affectflow registry list|describe|history|promote|rollback` (`affectflow register` is the register tail).

Thin wrappers over `affectflow.tracking.registry`; MLflow is imported only when one of these runs, so the
rest of the CLI stays quick to start.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from affectflow.cli import command, print_summary
from affectflow.config import Params

ACTIONS = ("list", "describe", "history", "promote", "rollback")
LOG_WIDTH = 120
"""Console width when stdout is not a terminal (CI logs, pipeline logs)."""


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="list | describe | history | promote | rollback")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", dest="model_version", help="model version (describe, promote)")
    which.add_argument("--alias", help="alias to describe, e.g. champion")
    p.add_argument("--force", action="store_true", help="promote even when the gate fails (recorded)")
    p.add_argument("--reason", default="", help="why (recorded in the promotion / rollback tags)")
    p.add_argument("--out", type=Path, help="also write the outcome as JSON to this file")


def _num(value: str | None) -> str:
    try:
        return f"{float(value):.3f}" if value not in (None, "") else ""
    except ValueError:
        return str(value)


def _ccc(r: dict[str, Any]) -> str:
    """Arousal / valence CCC in one cell; * when the targets were weak labels (the caption says so)."""
    a, v = _num(r.get("ccc_arousal")), _num(r.get("ccc_valence"))
    if not (a or v):
        return ""
    return f"{a or '-'}/{v or '-'}" + ("*" if str(r.get("weak_labels", "")).lower() == "true" else "")


def _table(rows: list[dict[str, Any]]) -> Any:
    """One line per version, narrow enough for a 100-column terminal: hashes and times shortened, the
    gate's verdict only (`registry describe` has its reasons, and WA)."""
    from rich import box
    from rich.table import Table

    weak = any(_ccc(r).endswith("*") for r in rows)
    table = Table(title="model versions", box=box.SIMPLE_HEAD,
                  caption="* CCC against weak (categorical -> circumplex) labels" if weak else None)
    numeric = ("uar", "F1", "min rec")
    for col in ("v", "aliases", "created (UTC)", *numeric, "CCC aro/val", "gate", "test set", "git"):
        table.add_column(col, justify="right" if col in numeric else "left", no_wrap=col != "aliases",
                         min_width=10 if col == "aliases" else None)
    for r in rows:
        table.add_row(r["version"], " ".join(r["aliases"]), r["created"][5:16].replace("T", " "),
                      _num(r.get("uar")), _num(r.get("macro_f1")), _num(r.get("min_recall")), _ccc(r),
                      str(r.get("gate", "")).split(" ", 1)[0], r.get("test_manifest_hash", "")[:8],
                      r.get("git_commit", "")[:7])
    return table


def _history_table(events: list[dict[str, Any]]) -> Any:
    """One line per promotion / rollback event, oldest first."""
    from rich import box
    from rich.table import Table

    table = Table(title="champion history", box=box.SIMPLE_HEAD)
    for col in ("#", "at (UTC)", "action", "v", "previous", "forced", "reason"):
        table.add_column(col, no_wrap=col != "reason")
    for e in events:
        table.add_row(str(e.get("seq", "")), str(e.get("at", ""))[:16].replace("T", " "), str(e.get("action", "")),
                      str(e.get("version", "")), str(e.get("previous") or ""), "yes" if e.get("forced") else "",
                      str(e.get("reason", "")))
    return table


READ_ACTIONS = ("list", "describe", "history")


def require_store(tracking_uri: str) -> None:
    """Every registry action reads an existing store: a local sqlite file or file-store folder
    that does not exist is a mistyped path, refused before MLflow would create an empty registry
    there (and answer "no versions" with exit 0). `affectflow register` creates stores."""
    from urllib.parse import unquote, urlparse

    from affectflow.tracking.uri import local_sqlite, resolve_uri

    uri = resolve_uri(tracking_uri)
    db = local_sqlite(uri)
    path = db if db is not None else Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else None
    if path is not None and not path.exists():
        raise RuntimeError(f"tracking.uri {uri}: {path} does not exist (a mistyped path?); registry commands read "
                           "an existing store, `affectflow register` creates one")


@command("registry", "model registry: list | describe | history | promote | rollback", _registry_args)
def _registry(params: Params, a: argparse.Namespace) -> int:
    from rich.console import Console

    from affectflow.runtime.imports import paused_gc
    from affectflow.storage import atomic_write_json

    with paused_gc():  # MLflow and its store: a third of the command's CPU went to the collector
        from affectflow.tracking.gate import Scores, ScoresError
        from affectflow.tracking.registry import Registry, RegistryError

    version = getattr(a, "model_version", None)
    if version is not None and not str(version).isdigit():  # before any store is opened
        raise RegistryError(f"Parameter 'version' must be an integer, got {version!r}.")
    require_store(params.tracking.uri)
    with paused_gc():  # the client imports the SQLAlchemy store
        if a.action in READ_ACTIONS:  # a read-only store can still be listed: no writer's checks
            from affectflow.tracking.uri import client, resolve_uri

            reg = Registry(params, client=client(resolve_uri(params.tracking.uri)))
        else:
            reg = Registry(params)
    console = Console()
    if not console.is_terminal:  # logs and pipes: rich's 80-column default would truncate the table
        console = Console(width=LOG_WIDTH)
    if a.action == "list":
        rows = []
        for info in reg.versions():
            row = info.summary()
            try:
                recall = Scores.from_tags(info.tags, info.version).per_class_recall
                row["min_recall"] = str(min(recall.values())) if recall else ""
            except ScoresError:
                pass
            rows.append(row)
        console.print(_table(rows) if rows else f"model {reg.name!r}: no versions registered")
        outcome: dict[str, Any] = {"model_name": reg.name, "versions": rows}
        code = 0
    elif a.action == "describe":
        version = a.model_version or (reg.alias_version(a.alias) if a.alias else None)
        if version is None:
            raise RegistryError(f"model {reg.name!r}: alias {a.alias!r} not set" if a.alias
                                else "describe needs --version N or --alias NAME")
        info = reg.describe(version)
        outcome = {"model_name": reg.name, "version": info.version, "aliases": info.aliases,
                   "created": info.created, "run_id": info.run_id, "source": info.source, "tags": info.tags}
        print_summary(f"{reg.name} v{info.version}", outcome)
        code = 0
    elif a.action == "history":
        events = reg.history()
        console.print(_history_table(events) if events else f"model {reg.name!r}: no promotions yet")
        outcome = {"model_name": reg.name, "events": events, "stack": reg.stack(),
                   "champion": reg.alias_version("champion")}
        code = 0
    elif a.action == "promote":
        if not a.model_version:
            raise RegistryError("promote needs --version N")
        outcome = reg.promote(a.model_version, force=a.force, reason=a.reason)
        reason = outcome["gate"]["reason"]
        title = (f"v{outcome['version']} PROMOTED" + (" (forced)" if outcome["forced"] else "") + f": {reason}"
                 if outcome["promoted"] else f"v{outcome['version']} {reason}")
        print_summary(title,
                      {k: outcome[k] for k in ("champion", "previous_champion", "aliases")})
        code = 0 if outcome["promoted"] else 1
    else:
        outcome = reg.rollback(reason=a.reason)
        print_summary(f"champion rolled back v{outcome['previous_champion']} -> v{outcome['champion']}",
                      outcome["event"])
        code = 0
    if a.out:
        atomic_write_json(a.out, outcome)
    return code
