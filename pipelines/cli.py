"""`affectflow pipeline compile | run --local | step | upload | submit | schedule`.

`--params` / `--set` work before or after the action (`affectflow pipeline run --local --set
train.epochs=2`). For `run`, `submit` and `schedule` the overrides become run arguments against
the compiled defaults (params.yaml), exactly what the Kubeflow run form would send.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from affectflow.cli import command, print_summary
from affectflow.config import Params, load_params


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the action they override, absent they keep the group-level values.
    p.add_argument("--params", default=argparse.SUPPRESS, help="parameters file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="override a parameter (repeatable)")


def _cluster(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--host", help="Kubeflow Pipelines endpoint (default: pipeline.host)")
    p.add_argument("--namespace", help="Kubernetes namespace (default: pipeline.namespace)")
    p.add_argument("--package", type=Path, help="compiled IR (default: pipelines/compiled/affectflow-train.yaml)")


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("compile", help="write the IR YAML into pipelines/compiled/")
    _common(c)
    c.add_argument("--out", type=Path, help="output file (default: pipelines/compiled/affectflow-train.yaml)")
    c.add_argument("--check", action="store_true", help="exit 1 if the committed IR is stale; write nothing")

    r = sub.add_parser("run", help="run the whole DAG (--local: kfp.local, in this environment)")
    _common(r)
    r.add_argument("--local", action="store_true", help="run embedded with kfp.local's SubprocessRunner")
    r.add_argument("--pipeline-root", type=Path, help="task outputs and cache (default: <workdir>/kfp)")
    r.add_argument("--no-cache", action="store_true", help="re-run every task")
    r.add_argument("--data-version", help="ingest cache stamp (default: a stat fingerprint of the corpora)")
    r.add_argument("--retries", type=int, default=0, help="retries per failed task (default: 0 locally)")

    st = sub.add_parser("step", help="run augment | pretrain | train as the pipeline does (used by dvc.yaml)")
    _common(st)
    st.add_argument("stage", choices=("augment", "pretrain", "train"))

    u = sub.add_parser("upload", help="upload the IR as a pipeline, or as a new version of it")
    _cluster(u)
    u.add_argument("--name", default=None, help="pipeline name (default: affectflow-train)")
    u.add_argument("--version", help="version name (default: UTC time + IR digest)")

    s = sub.add_parser("submit", help="create a run on the cluster")
    _cluster(s)
    s.add_argument("--experiment", default="affectflow", help="Kubeflow experiment (default: affectflow)")
    s.add_argument("--run-name")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--data-version", help="data stamp (default: lineage.dvc_revision())")

    sc = sub.add_parser("schedule", help="create a recurring run from a 6-field cron")
    _cluster(sc)
    sc.add_argument("--cron", help="6-field cron, seconds first (default: pipeline.schedule_cron)")
    sc.add_argument("--max-concurrency", type=int, help="default: pipeline.max_concurrency")
    sc.add_argument("--experiment", default="affectflow")
    sc.add_argument("--job-name", help="recurring run name (default: affectflow-train-schedule); one per "
                    "experiment: re-running with the same settings changes nothing")
    sc.add_argument("--no-cache", action="store_true")
    sc.add_argument("--replace", action="store_true",
                    help="if a recurring run of this name exists with other settings, create the new one and "
                         "delete the old (without it: refused)")


def _base(a: argparse.Namespace) -> Params:
    """params.yaml without overrides: the compiled run-form defaults."""
    return load_params(a.params)


def _package(a: argparse.Namespace, base: Params) -> Path:
    from affectflow.orchestration import pipeline as P

    if a.package:
        return a.package
    path = P.project_root() / P.COMPILED
    if P.stale(base, path):
        raise P.PipelineError(f"{path} is stale or missing for {a.params}: run `affectflow pipeline compile`")
    return path


def _arguments(a: argparse.Namespace, params: Params, base: Params, data_version: str | None) -> dict[str, Any]:
    from affectflow.orchestration import pipeline as P

    args = P.pipeline_arguments(params, base)
    if data_version:
        args[P.DATA_VERSION] = data_version
    return args


@command("pipeline", "Kubeflow pipeline: compile | run --local | upload | submit | schedule", _args)
def _pipeline(params: Params, a: argparse.Namespace) -> int:
    from affectflow.orchestration import pipeline as P

    if a.action == "compile":
        if a.check:
            path = a.out or P.project_root() / P.COMPILED
            if P.stale(params, path):
                print(f"{path} is stale: run `affectflow pipeline compile`", file=sys.stderr)
                return 1
            print(f"{path} is up to date")
            return 0
        out = P.compile_pipeline(params, a.out)
        print(f"compiled {P.PIPELINE_NAME}: {out} ({len(P.tunables(params))} run-form parameters)")
        return 0

    if a.action == "run":
        if not a.local:
            print("error: `pipeline run` needs --local (use `pipeline submit` for a cluster)", file=sys.stderr)
            return 2
        summary = P.run_local(_base(a), params, pipeline_root=a.pipeline_root, cache=not a.no_cache,
                              data_version=a.data_version, retries=a.retries)
        print_run(summary, params)
        return 0

    if a.action == "step":
        print_summary(f"pipeline step {a.stage}", P.run_step(params, a.stage))
        return 0

    client = P.kfp_client(params, a.host, a.namespace)
    base = _base(a)
    package = _package(a, base)
    if a.action == "upload":
        res = P.upload(client, package, name=a.name or P.PIPELINE_NAME, version=a.version)
        print_summary("uploaded", res)
        return 0
    if a.action == "submit":
        from affectflow.tracking.lineage import dvc_revision

        args = _arguments(a, params, base, a.data_version or dvc_revision() or "")
        res = P.submit(client, package, args, experiment=a.experiment, run_name=a.run_name,
                       namespace=a.namespace or params.pipeline.namespace, cache=not a.no_cache)
        print_summary("submitted", {**res, "arguments": args})
        return 0
    if a.action == "schedule":
        args = _arguments(a, params, base, None)
        res = P.schedule(client, package, args, cron=a.cron or params.pipeline.schedule_cron,
                         experiment=a.experiment,
                         max_concurrency=a.max_concurrency or params.pipeline.max_concurrency,
                         job_name=a.job_name, namespace=a.namespace or params.pipeline.namespace,
                         cache=not a.no_cache, replace=a.replace)
        print_summary(f"schedule {res['action']}", {**res, "arguments": args})
        return 0
    raise ValueError(f"unknown pipeline action {a.action!r}")


def print_run(summary: dict[str, Any], params: Params) -> None:
    """Per-task table, headline metrics, the registered version and where the MLflow UI is."""
    from rich.console import Console
    from rich.table import Table

    from affectflow.tracking.registry import resolve_uri

    console = Console()
    table = Table(title=f"{summary['pipeline']}: {summary['status']} in {summary['wall_s']:.1f} s")
    for col in ("task", "status", "seconds", "cached"):
        table.add_column(col)
    for name, t in summary["tasks"].items():
        table.add_row(name, t["status"], f"{t['seconds']:.1f}", "yes" if t["cached"] else "")
    console.print(table)
    metrics = summary.get("metrics") or {}
    shown = {k: round(v, 4) for k, v in metrics.items() if k.split(".")[0] in ("uar", "wa", "macro_f1")}
    if shown:
        console.print("[bold]test metrics[/bold]", shown)
    reg = summary.get("register")
    if reg:
        gate = reg.get("gate") or {}
        promotion = summary.get("promotion") or {}
        champion = promotion.get("champion") or reg.get("champion")
        aliases = promotion.get("aliases") or reg.get("aliases", [])
        # plain print: URIs and commands must stay on one line to be copied
        print(f"registered: {reg.get('model_uri')} (aliases: {', '.join(aliases)})")
        print(f"gate {'passed' if gate.get('passed') else 'failed'}: {gate.get('reason', '')}")
        print(f"champion: v{champion}" if champion else "champion: none")
    print(f"MLflow UI: mlflow ui --backend-store-uri {resolve_uri(params.tracking.uri)}")
    print(f"task outputs: {summary['pipeline_root']} (summary: last_run.json)")
