"""A Kubeflow Pipelines cluster through `kfp.Client`: upload the IR, submit a run, schedule one.

Everything here takes a compiled IR file; building and compiling the DAG is `pipelines/`' job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.orchestration.ir import PIPELINE_NAME, PipelineError, documents


def validate_cron(expr: str) -> str:
    """A 6-field cron (seconds first, as Kubeflow's scheduler reads it); raises ValueError otherwise."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(f"cron {expr!r}: expected 6 fields (second minute hour day month weekday), "
                         f"got {len(fields)}")
    if not croniter.is_valid(expr, second_at_beginning=True):
        raise ValueError(f"cron {expr!r}: not a valid cron expression")
    return " ".join(fields)


def next_fire_times(expr: str, n: int = 3, start: datetime | None = None) -> list[str]:
    from croniter import croniter

    it = croniter(validate_cron(expr), start or datetime.now(timezone.utc), second_at_beginning=True)
    return [it.get_next(datetime).isoformat(timespec="seconds") for _ in range(n)]


def kfp_client(params: Params, host: str | None = None, namespace: str | None = None,
               factory: Callable[..., Any] | None = None) -> Any:
    """kfp.Client on `host` (or pipeline.host); `factory` replaces kfp.Client in tests."""
    endpoint = host or params.pipeline.host
    if not endpoint:
        raise PipelineError("pipeline.host is empty: pass --host or set pipeline.host in params.yaml")
    if factory is None:
        import kfp

        factory = kfp.Client
    return factory(host=endpoint, namespace=namespace or params.pipeline.namespace)


def _version_name(package: Path) -> str:
    import hashlib

    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:8]
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{digest}"


def pipeline_id_in(client: Any, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called `name`: among the namespace's own pipelines when one is given
    (multi-user Kubeflow lists a profile's pipelines only when asked with its namespace)."""
    if namespace is None:
        return client.get_pipeline_id(name)
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = getattr(client.list_pipelines(filter=flt, namespace=namespace, page_size=2), "pipelines", None) or []
    if len(found) > 1:
        raise PipelineError(f"{len(found)} pipelines named {name!r} in namespace {namespace!r}: names must be unique")
    return found[0].pipeline_id if found else None


def upload(client: Any, package: str | Path, *, name: str = PIPELINE_NAME, version: str | None = None,
           description: str = "", namespace: str | None = None) -> dict[str, Any]:
    """Upload the IR as a new pipeline, or as a new version of the pipeline of that name. With a
    `namespace` (multi-user Kubeflow: the profile's), the pipeline is the namespace's own: the API
    refuses a shared upload from a profile's service account."""
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    pipeline_id = pipeline_id_in(client, name, namespace)
    if pipeline_id is None:
        p = client.upload_pipeline(pipeline_package_path=str(package), pipeline_name=name,
                                   description=description or None, namespace=namespace)
        pipeline_id = p.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1)
        first = (getattr(versions, "pipeline_versions", None) or [None])[0]
        return {"pipeline_id": pipeline_id, "version_id": getattr(first, "pipeline_version_id", None),
                "version": getattr(first, "display_name", None), "created_pipeline": True}
    vname = version or _version_name(package)
    v = client.upload_pipeline_version(pipeline_package_path=str(package), pipeline_version_name=vname,
                                       pipeline_id=pipeline_id, description=description or None)
    return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id, "version": vname,
            "created_pipeline": False}


def submit(client: Any, package: str | Path, arguments: Mapping[str, Any], *, experiment: str,
           run_name: str | None = None, namespace: str | None = None, cache: bool = True) -> dict[str, Any]:
    """Create one run of the compiled pipeline with `arguments` (run-form values)."""
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    name = run_name or f"{PIPELINE_NAME}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    res = client.create_run_from_pipeline_package(
        str(package), arguments=dict(arguments), run_name=name, experiment_name=experiment,
        namespace=namespace, enable_caching=cache)
    return {"run_id": res.run_id, "run_name": name, "experiment": experiment}


SCHEDULE_PAGE_SIZE = 100
"""Recurring runs asked for per `list_recurring_runs` page while looking for an existing schedule."""
SCHEDULE_DESCRIPTION = "{pipeline} schedule; IR sha256 {digest}; caching {caching}"
"""Description of the recurring runs `schedule` creates: it records the IR and the caching choice,
which the API does not return in a comparable form, so a re-run can tell whether they changed."""


class ScheduleConflictError(PipelineError):
    """A recurring run of that name exists with other settings; `--replace` swaps it."""


def _ir_digest(package: Path) -> str:
    """sha256 of the IR as data (two compiles of one pipeline differ as text, see `_documents`)."""
    import hashlib

    canonical = json.dumps(documents(package), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _schedule_settings(run: Any) -> dict[str, Any]:
    """What decides whether a recurring run is the one asked for, read from a kfp_server_api
    V2beta1RecurringRun (max_concurrency is an int64, which the API sends as a string)."""
    cron = getattr(getattr(getattr(run, "trigger", None), "cron_schedule", None), "cron", None)
    concurrency = getattr(run, "max_concurrency", None)
    return {"cron": " ".join(cron.split()) if cron else None,
            "max_concurrency": int(concurrency) if concurrency is not None else None,
            "params": dict(getattr(getattr(run, "runtime_config", None), "parameters", None) or {}),
            "description": getattr(run, "description", None)}


def recurring_runs_named(client: Any, name: str, *, experiment_id: str,
                         namespace: str | None = None) -> list[Any]:
    """Every recurring run of the experiment whose display name is `name`, all pages read."""
    found: list[Any] = []
    token, seen = "", set()
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, namespace=namespace,
                                          page_size=SCHEDULE_PAGE_SIZE, page_token=token)
        found.extend(r for r in (getattr(page, "recurring_runs", None) or []) if r.display_name == name)
        token = getattr(page, "next_page_token", None) or ""
        if not token:
            return found
        if token in seen:
            raise PipelineError(f"list_recurring_runs (experiment {experiment_id}): the server returned "
                                f"page token {token!r} twice")
        seen.add(token)


def schedule(client: Any, package: str | Path, arguments: Mapping[str, Any], *, cron: str, experiment: str,
             max_concurrency: int, job_name: str | None = None, namespace: str | None = None,
             cache: bool = True, replace: bool = False) -> dict[str, Any]:
    """Create a recurring run from a 6-field cron, once: no catch-up of missed runs.

    Idempotent by name within the experiment: a recurring run of the same name with the same cron,
    arguments, max_concurrency, IR and caching is returned as is (`action: unchanged`), so a second
    call (a Helm upgrade, a re-run script) does not add a second weekly retraining. One with other
    settings is refused with ScheduleConflictError unless `replace`: then the new one is created
    first and the old one(s) deleted after, so a failed create leaves the old schedule running.
    The cron is validated before anything is sent, so a typo never reaches the cluster.
    """
    expr = validate_cron(cron)
    if max_concurrency < 1:
        raise ValueError(f"pipeline.max_concurrency: must be >= 1, got {max_concurrency}")
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    exp = client.create_experiment(name=experiment, namespace=namespace)
    name = job_name or f"{PIPELINE_NAME}-schedule"
    description = SCHEDULE_DESCRIPTION.format(pipeline=PIPELINE_NAME, digest=_ir_digest(package),
                                              caching="on" if cache else "off")
    wanted = {"cron": expr, "max_concurrency": max_concurrency, "params": dict(arguments),
              "description": description}
    existing = recurring_runs_named(client, name, experiment_id=exp.experiment_id, namespace=namespace)
    result = {"job_name": name, "experiment": experiment, "cron": expr, "max_concurrency": max_concurrency,
              "no_catchup": True, "next": next_fire_times(expr)}
    ids = [r.recurring_run_id for r in existing]
    if len(existing) == 1 and _schedule_settings(existing[0]) == wanted:
        return {"action": "unchanged", "recurring_run_id": ids[0], **result,
                "mode": getattr(existing[0], "mode", None)}
    if existing and not replace:
        raise ScheduleConflictError(_conflict_message(name, experiment, existing, wanted))
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description=description, cron_expression=expr,
        max_concurrency=max_concurrency, no_catchup=True, params=dict(arguments),
        pipeline_package_path=str(package), enabled=True, enable_caching=cache)
    for old in ids:
        try:
            client.delete_recurring_run(old)
        except Exception as e:  # kfp_server_api ApiException, connection errors: say what is left
            raise PipelineError(f"created recurring run {job.recurring_run_id} ({name!r}) but could not delete "
                                f"the old one {old}: {e}; delete it in the Kubeflow UI or with "
                                "kfp.Client().delete_recurring_run") from None
    return {"action": "replaced" if ids else "created", "recurring_run_id": job.recurring_run_id, **result,
            **({"replaced": ids} if ids else {})}


def _conflict_message(name: str, experiment: str, existing: list[Any], wanted: dict[str, Any]) -> str:
    ids = ", ".join(r.recurring_run_id for r in existing)
    if len(existing) > 1:
        return (f"{len(existing)} recurring runs named {name!r} in experiment {experiment!r} ({ids}): "
                "pass --replace to delete them all and create one")
    have = _schedule_settings(existing[0])
    what = "; ".join(f"{k}: {have[k]!r} -> {wanted[k]!r}" for k in wanted if have[k] != wanted[k])
    return (f"recurring run {ids} ({name!r}, experiment {experiment!r}) exists with other settings "
            f"({what}): pass --replace to delete it and create the new one")
