"""`affectflow pipeline compile | run --local | rehearse | upload | submit | schedule`.

Registered with the affectflow CLI through the `affectflow.cli` entry point (pyproject.toml): the
library never imports `pipelines`, this module imports the library.

`--params` / `--set` work before or after the action (`affectflow pipeline run --local --set
train.epochs=2`). For `run`, `submit` and `schedule` the overrides become run arguments against
the compiled defaults (params.yaml): run-form fields, and `params_overrides` for the rest, exactly
what the Kubeflow run form would send. For `upload` they become the uploaded pipeline's run-form
defaults (the chart sets the cluster's data root this way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from affectflow.cli import command, print_summary
from affectflow.config import Params, load_params
from affectflow.orchestration import cluster as C
from affectflow.orchestration.ir import PIPELINE_NAME, PipelineError, compile_to, stale, with_defaults
from affectflow.orchestration.run_form import DATA_VERSION, RUN_FORM, pipeline_arguments
from pipelines.train_pipeline import build_pipeline


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the action they override, absent they keep the group-level values.
    p.add_argument("--params", default=argparse.SUPPRESS, help="parameters file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="override a parameter (repeatable)")


def _cluster(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--host", help="Kubeflow Pipelines endpoint (default: pipeline.host)")
    p.add_argument("--namespace", help="Kubernetes namespace (default: pipeline.namespace)")
    p.add_argument("--package", type=Path, help="compiled IR (default: the committed pipelines/compiled/affectflow-train.yaml)")


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("compile", help="write the IR YAML into pipelines/compiled/")
    _common(c)
    c.add_argument("--out", type=Path, help="output file (default: pipelines/compiled/affectflow-train.yaml in a "
                   "checkout, else ./affectflow-train.yaml)")
    c.add_argument("--check", action="store_true", help="exit 1 if the committed IR is stale; write nothing")

    r = sub.add_parser("run", help="run the whole DAG (--local: kfp.local, in this environment)")
    _common(r)
    r.add_argument("--local", action="store_true", help="run embedded with kfp.local's SubprocessRunner")
    r.add_argument("--pipeline-root", type=Path, help="task outputs and cache (default: <workdir>/kfp)")
    r.add_argument("--no-cache", action="store_true", help="re-run every task")
    r.add_argument("--data-version", help="data label put before the data stamp the run computes (default: none)")
    r.add_argument("--retries", type=int, default=0, help="retries per failed task (default: 0 locally)")
    r.add_argument("--verbose", action="store_true",
                   help="stream every task's full log (executor input JSON, library INFO lines)")

    rh = sub.add_parser("rehearse", help="run every IR task as a cluster does: image root built from "
                        "Dockerfile.cpu, a fresh chroot per task, S3 + MLflow + KServe on 127.0.0.1 (root; docs/REHEARSAL.md)")
    _common(rh)
    rh.add_argument("--out", type=Path, default=Path("artifacts/rehearsal"),
                    help="logs and report.{md,json} (default: artifacts/rehearsal)")
    rh.add_argument("--corpus", choices=("generated", "shared"), default="generated",
                    help="what goes to S3: generated RAVDESS-layout audio, or speakers of ../shared/data/ravdess")
    rh.add_argument("--speakers", type=int, default=8, help="speakers in the corpus (default: 8)")
    rh.add_argument("--target-corpus", choices=("emodb",), help="also upload this unlabelled target corpus "
                    "(role: target, ../shared/data) so the DANN branch (--set pretrain.enabled=true) can run")
    rh.add_argument("--task-timeout", type=float, default=3600.0, help="seconds per task (default: 3600)")

    u = sub.add_parser("upload", help="upload the IR as a pipeline, or as a new version of it")
    _cluster(u)
    u.add_argument("--name", default=None, help="pipeline name (default: affectflow-train)")
    u.add_argument("--version", help="version name (default: UTC time + IR digest)")

    s = sub.add_parser("submit", help="create a run on the cluster")
    _cluster(s)
    s.add_argument("--experiment", default="affectflow", help="Kubeflow experiment (default: affectflow)")
    s.add_argument("--run-name")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--data-version", help="data stamp (default: the DVC revision of the data)")

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


def compiled_path() -> Path:
    """The committed IR: pipelines/compiled/ beside this package (shipped in the wheel too)."""
    return Path(__file__).resolve().parent / "compiled" / f"{PIPELINE_NAME}.yaml"


def default_compile_target() -> Path:
    """Where `compile` writes without --out: the committed IR in a checkout, else ./<name>.yaml
    (an installed package's folder is not a place to write)."""
    here = compiled_path()
    in_checkout = (here.parents[2] / "pyproject.toml").is_file()
    return here if in_checkout else Path.cwd() / here.name


def _package(a: argparse.Namespace, base: Params) -> Path:
    if a.package:
        return a.package
    path = compiled_path()
    if stale(build_pipeline(base), path):
        raise PipelineError(f"{path} is stale or missing for {a.params}: run `affectflow pipeline compile`")
    return path


def run_local(base: Params, params: Params, *, pipeline_root: str | Path | None = None, cache: bool = True,
              data_version: str | None = None, retries: int = 0, verbose: bool = False) -> dict[str, Any]:
    """The DAG compiled from `base`, run embedded with `params`: the difference travels as run
    arguments, exactly as a run submitted from the UI. `retries` replaces pipeline.retries (on one
    machine a failure is rarely transient, so by default none)."""
    from affectflow.orchestration.local import local_root
    from affectflow.orchestration.local import run_local as run_embedded

    compiled = base.model_copy(deep=True)
    compiled.pipeline.retries = retries
    args = _arguments(params, base, data_version)
    return run_embedded(build_pipeline(compiled), args, pipeline_root or local_root(params), cache=cache,
                        verbose=verbose)


def _arguments(params: Params, base: Params, data_version: str | None) -> dict[str, Any]:
    args = pipeline_arguments(params, base)
    if data_version:
        args[DATA_VERSION] = data_version
    return args


@command("pipeline", "Kubeflow pipeline: compile | run --local | upload | submit | schedule", _args)
def _pipeline(params: Params, a: argparse.Namespace) -> int:
    if a.action == "compile":
        from pipelines.monitor_pipeline import MONITOR_PIPELINE_NAME, build_monitor_pipeline

        if a.check:
            path = a.out or compiled_path()
            monitor_path = path.with_name(f"{MONITOR_PIPELINE_NAME}.yaml")
            if stale(build_pipeline(params), path) or stale(build_monitor_pipeline(params), monitor_path):
                print(f"{path} or {monitor_path} is stale: run `affectflow pipeline compile`", file=sys.stderr)
                return 1
            print(f"{path} and {monitor_path} are up to date")
            return 0
        out = compile_to(build_pipeline(params), a.out or default_compile_target())
        mon = compile_to(build_monitor_pipeline(params), out.with_name(f"{MONITOR_PIPELINE_NAME}.yaml"))
        print(f"compiled {PIPELINE_NAME}: {out} ({len(RUN_FORM) + 2} run-form parameters); the monitor pipeline: {mon}")
        return 0

    if a.action == "run":
        if not a.local:
            print("error: `pipeline run` needs --local (use `pipeline submit` for a cluster)", file=sys.stderr)
            return 2
        summary = run_local(_base(a), params, pipeline_root=a.pipeline_root, cache=not a.no_cache,
                            data_version=a.data_version, retries=a.retries, verbose=a.verbose)
        print_run(summary, params)
        return 0

    if a.action == "rehearse":
        from affectflow.orchestration.rehearsal.run import rehearse

        repo = Path(__file__).resolve().parents[1]
        report = rehearse(repo, a.out, params_path=Path(getattr(a, "params", None) or "params.yaml"),
                          overrides=list(getattr(a, "overrides", None) or []), corpus=a.corpus,
                          speakers=a.speakers, target=a.target_corpus, task_timeout_s=a.task_timeout)
        print(report.table())
        print(f"rehearsal {report.status} in {report.wall_s:.0f} s; report: {a.out / 'report.md'}")
        return 0 if report.status == "SUCCEEDED" else 1

    client = C.kfp_client(params, a.host, a.namespace)
    base = _base(a)
    package = _package(a, base)
    if a.action == "upload":
        # --set on upload: the uploaded IR's run-form defaults (what the UI form shows and what a run that
        # does not set a field gets), e.g. the cluster's data root from the chart.
        defaults = _arguments(params, base, None)
        with tempfile.TemporaryDirectory() as tmp:
            if defaults:
                package = with_defaults(package, defaults, Path(tmp) / package.name)
            res = C.upload(client, package, name=a.name or PIPELINE_NAME, version=a.version,
                           namespace=a.namespace or params.pipeline.namespace)
        print_summary("uploaded", {**res, **({"defaults": defaults} if defaults else {})})
        return 0
    if a.action == "submit":
        from affectflow.tracking.revisions import dvc_revision

        args = _arguments(params, base, a.data_version or dvc_revision() or "")
        res = C.submit(client, package, args, experiment=a.experiment, run_name=a.run_name,
                       namespace=a.namespace or params.pipeline.namespace, cache=not a.no_cache)
        print_summary("submitted", {**res, "arguments": args})
        return 0
    if a.action == "schedule":
        args = _arguments(params, base, None)
        res = C.schedule(client, package, args, cron=a.cron or params.pipeline.schedule_cron,
                         experiment=a.experiment,
                         max_concurrency=a.max_concurrency or params.pipeline.max_concurrency,
                         job_name=a.job_name, namespace=a.namespace or params.pipeline.namespace,
                         cache=not a.no_cache, replace=a.replace)
        print_summary(f"schedule {res['action']}", {**res, "arguments": args})
        return 0
    raise ValueError(f"unknown pipeline action {a.action!r}")


def _ci(r: dict[str, Any], name: str) -> str:
    lo, hi = r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
    return f"{r[name]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None and lo != hi else f"{r[name]:.3f}"


def print_run(summary: dict[str, Any], params: Params) -> None:
    """The run's last screen: what ran, how good the model is (with intervals and chance level),
    what the registry did, where to look, and the next command."""
    from rich.console import Console
    from rich.table import Table

    from affectflow.tracking.uri import resolve_uri

    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"{summary['pipeline']}: {summary['status']} in {summary['wall_s']:.0f} s")
    for col in ("task", "status", "seconds", "cached"):
        table.add_column(col)
    for name, t in summary["tasks"].items():
        table.add_row(name, t["status"], f"{t['seconds']:.1f}", "yes" if t["cached"] else "")
    console.print(table)
    ev = summary.get("evaluation") or {}
    test = ev.get("test") or {}
    if test.get("synthetic_data"):
        console.print("[bold reverse] SYNTHETIC DEMO DATA [/bold reverse] these figures are on generated audio "
                      "(no ../shared/data), not on speech: they only show that the pipeline works.")
    if test:
        m = Table(title=f"test: {test.get('scope', 'test split')} — {test['n']} clips, "
                        f"{len(test.get('per_speaker', {}))} unseen speakers", show_header=True)
        for col in ("metric", "value [95 % CI]"):
            m.add_column(col)
        for name, label in (("uar", "UAR (primary)"), ("wa", "WA"), ("macro_f1", "macro-F1")):
            m.add_row(label, _ci(test, name))
        m.add_row("chance UAR", f"{test.get('chance_uar', 0):.3f} ({len(test.get('predicted_over', []))} classes)")
        if (test.get("collapse") or {}).get("collapsed"):
            m.add_row("collapse", "; ".join(test["collapse"]["reasons"]))
        for name, r in (ev.get("cross_corpus") or {}).items():
            m.add_row(f"UAR on {name}", _ci(r, "uar") + (" (collapsed)" if r.get("collapse", {}).get("collapsed") else ""))
        console.print(m)
    reg = summary.get("register")
    # plain print below: URIs and commands must stay on one line to be copied
    if reg:
        promotion = summary.get("promotion") or {}
        champion = promotion.get("champion") or reg.get("champion")
        aliases = promotion.get("aliases") or reg.get("aliases", [])
        gate = reg.get("gate") or {}
        print(f"registered: {reg.get('model_uri')} (aliases: {', '.join(aliases) or 'none'})")
        if promotion.get("promoted") or (reg.get("promoted") and not promotion):
            print(f"promoted: v{champion} is the champion ({gate.get('reason', '')})")
        else:
            print(f"not promoted: {gate.get('reason', '')}" + (f"; champion stays v{champion}" if champion else ""))
    paths = summary.get("paths") or {}
    for key, label in (("report", "evaluation report"), ("confusion", "confusion matrix"), ("curves", "training curves"),
                       ("model", "model folder")):
        if key in paths:
            print(f"{label + ':':<19}{paths[key]}")
    print(f"{'MLflow UI:':<19}mlflow ui --backend-store-uri {resolve_uri(params.tracking.uri)}")
    print(f"{'task outputs:':<19}{summary['pipeline_root']} (run summary: last_run.json)")
    if "model" in paths:
        print(f"next: affectflow predict <audio file or folder> --model {paths['model']}")
