"""What a Kubeflow component does around its stage call: read its configuration, shape outputs.

The components in `components/` are thin: each imports this module inside its body (the body is
all that travels into the container), builds `Params` from the configuration string the
`params` task handed it, calls one library stage function and turns the stage's files into the
typed artifacts the Kubeflow UI shows (Metrics scalars, Markdown and HTML reports with the plots
inlined, a confusion matrix). Keeping this here, not in the component bodies, means it is
imported, linted and unit-tested like the rest of the library.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from affectflow.config import ConfigError, Params, params_from_tree, params_yaml
from affectflow.contracts.workdir import optional_dir, write_skipped
from affectflow.storage import atomic_write_json, atomic_write_text


# ----------------------------------------------------------------------------- configuration
def resolve_params(base: str, values: Mapping[str, Any], params_path: str | Path) -> tuple[str, ...]:
    """The resolve-params task: validate the run's parameters once (`run_form.resolve`), check that
    the tracking server the run will log to is there (`preflight`), write the full params.yaml
    artifact, return one configuration string per stage (`STAGES` order)."""
    from affectflow.orchestration.run_form import resolve, stage_configs

    params = resolve(base, values)
    preflight()
    atomic_write_text(params_path, params_yaml(params))
    return tuple(stage_configs(params).values())


TRACKING_ENV = "MLFLOW_TRACKING_URI"
"""Set in a Kubeflow task by the MLflow Secret: the cluster's MLflow, which replaces tracking.uri
(a sqlite file inside a pod would vanish with it)."""
TRACKING_SECRET_ENV = "AFFECTFLOW_TRACKING_SECRET"
"""Baked into the tasks that log to MLflow when the pipeline is compiled with
pipeline.require_tracking_server: the Secret their MLFLOW_TRACKING_URI comes from."""
KFP_POD_ENV = "KFP_POD_NAME"
"""Set by the Kubeflow Pipelines backend in every task pod (kfp.local does not set it)."""
SERVER_SCHEMES = ("http://", "https://", "databricks")
PROBE_TIMEOUT_S = 10.0
PROBE_ATTEMPTS = 3


class TrackingServerError(RuntimeError):
    """A Kubeflow task that must log to a tracking server has none; the message names the Secret key."""


def required_tracking_secret() -> str | None:
    """The Secret this task's tracking server must come from: in a Kubeflow pod (KFP_POD_NAME) of a
    pipeline compiled with pipeline.require_tracking_server; None elsewhere (kfp.local, the CLI)."""
    secret = os.environ.get(TRACKING_SECRET_ENV, "").strip()
    return secret if secret and os.environ.get(KFP_POD_ENV) else None


def _where(secret: str) -> str:
    return f"Secret '{secret}' key '{TRACKING_ENV}'"


def check_tracking_env(configured: str) -> str | None:
    """The tracking server URI of a task that requires one; raises naming the Secret key when the
    key is missing, empty or not a server (the fallback `configured` would be a file in the pod)."""
    secret = required_tracking_secret()
    if secret is None:
        return None
    uri = os.environ.get(TRACKING_ENV, "").strip()
    if not uri:
        raise TrackingServerError(
            f"{TRACKING_ENV} is not set in this Kubeflow task: {_where(secret)} is missing or empty. Without it "
            f"MLflow would write to tracking.uri={configured!r} inside the pod, and the run's results and "
            f"registered models would vanish with the pod. Create the Secret in the pipeline's namespace (the "
            f"chart's kubeflow.mlflowSecretName) or compile with pipeline.require_tracking_server: false")
    if not uri.startswith(SERVER_SCHEMES):
        raise TrackingServerError(f"{_where(secret)} is {uri!r}: not a tracking server (http:// or https://); "
                                  "a file store inside a pod vanishes with it")
    return uri


def probe_tracking_server(uri: str, secret: str, timeout_s: float = PROBE_TIMEOUT_S,
                          attempts: int = PROBE_ATTEMPTS) -> None:
    """GET <uri>/health until it answers 200 (a few tries, bounded); raises naming the Secret key."""
    import time
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    last = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(min(5.0, timeout_s))
    raise TrackingServerError(f"MLflow tracking server {uri} ({_where(secret)}) does not answer {uri.rstrip('/')}"
                              f"/health after {attempts} tries: {last}")


def preflight() -> None:
    """The first task's check (resolve-params): the tracking server the run needs is configured and
    answers, so a run without one fails before any work, naming the Secret key."""
    secret = required_tracking_secret()
    if secret is None:
        return
    uri = check_tracking_env("")
    assert uri is not None
    probe_tracking_server(uri, secret)
    print(f"tracking server {uri} ({_where(secret)}) answers")


def _tracking_from_env(params: Params) -> Params:
    """tracking.uri <- MLFLOW_TRACKING_URI when set; in a Kubeflow task that requires a tracking
    server, its absence is an error instead of a silent fallback to a file inside the pod."""
    uri = check_tracking_env(params.tracking.uri) or os.environ.get(TRACKING_ENV)
    if uri and uri != params.tracking.uri:
        params.tracking.uri = uri
    return params


def stage_params(config: str, stage: str) -> Params:
    """Params from a stage's configuration string (sections it does not read keep their defaults)."""
    try:
        tree = json.loads(config)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{stage}: configuration is not JSON ({e})") from None
    return _tracking_from_env(params_from_tree(tree, f"{stage} task configuration"))


def tracking_uri(configured: str) -> str:
    """The MLflow URI a task uses: MLFLOW_TRACKING_URI when set, else the configured one."""
    return os.environ.get(TRACKING_ENV) or configured


def run_task(stage: str, config: str, inputs: Mapping[str, str | Path | None], out_dir: str | Path) -> Any:
    """What a stage component does: its params from `config`, the stage's `run` on `inputs`
    (None = a switched-off branch's placeholder, left out) into `out_dir`."""
    from affectflow.stages import get

    params = stage_params(config, stage)
    given = {k: Path(v) for k, v in inputs.items() if v is not None}
    return get(stage).run(params, given, Path(out_dir))


def feature_plan_task(config: str, manifest: str | Path) -> list[int]:
    """The plan-features task: shard numbers 0..n-1 of the clips the manifest still needs."""
    from affectflow.stages.features import shards_to_compute

    return list(range(shards_to_compute(stage_params(config, "features"), manifest)))


def feature_shard_task(config: str, manifest: str | Path, shard: int, out_dir: str | Path) -> dict[str, Any]:
    """A feature-shard task: shard `shard` of the same plan, into its own folder."""
    from affectflow.stages.features import extract_features

    return extract_features(stage_params(config, "features"), manifest, out_dir, shard=shard).summary


def features_gather_task(config: str, manifest: str | Path, parts: list[str], out_dir: str | Path) -> Any:
    """The features task: the shard tasks' shards (and `features.previous`'s) into one store with
    its index; a clip no shard holds (e.g. a failed plan) is computed here."""
    from affectflow.stages.features import extract_features

    return extract_features(stage_params(config, "features"), manifest, out_dir, previous=parts)


def gate_outcome(res: Any, summary: Any, report: Any) -> bool:
    """A validate task's artifacts from its GateResult; a failed gate fails the task (and the run)."""
    log_metrics(summary, res.summary)
    text = Path(res.report_md).read_text()
    write_markdown(report, text)
    if not res.passed:
        raise RuntimeError(f"validation gate failed; report: {res.report_md}\n{text}")
    return bool(res.passed)


def data_stamp_task(config: str, data_version: str) -> str:
    """The data-stamp task (never cached): what ingest's cache is keyed on. The corpus roots'
    fingerprint (`lineage.data_fingerprint`: local files by path, size and mtime; s3:// prefixes by
    key, size and ETag), after the run form's `data_version` label when one is given; so a
    recurring run re-ingests exactly when objects under the corpus prefix changed."""
    from affectflow.tracking.lineage import data_fingerprint

    stamp = data_fingerprint(stage_params(config, "ingest"))
    return f"{data_version}@{stamp}" if data_version else stamp


def rescore_task(evaluate_config: str, register_config: str, manifest: str | Path, store: str | Path,
                 model_dir: str | Path, evaluation: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The rescore-champion task: the champion scored on this run's test manifest when it has no
    scores there (`affectflow.orchestration.rescore`); evaluate's settings, the registry's section."""
    from affectflow.contracts.workdir import METRICS_FILE
    from affectflow.orchestration.rescore import rescore

    p = stage_params(evaluate_config, "evaluate")
    reg = stage_params(register_config, "register")
    p.registry, p.tracking = reg.registry, reg.tracking
    plan = rescore(p, manifest, store, model_dir, Path(evaluation) / METRICS_FILE, out_dir)
    return plan.to_json()


def register_task(config: str, model_dir: str | Path, evaluation: str | Path, out_dir: str | Path,
                  rescore: str | Path | None = None, data_version: str = "") -> dict[str, Any]:
    """The register task: a new `challenger` version (or the one already registered for this model),
    gated on one test set with the champion (re-scored by the rescore task when needed); promotion
    is the DAG's `promote` task (visible in the UI), so `auto_promote` is switched off here and
    returned for the branch."""
    from affectflow.contracts.workdir import METRICS_FILE
    from affectflow.tracking import registry

    p = stage_params(config, "register")
    auto_promote = p.registry.auto_promote
    p.registry.auto_promote = False
    res = registry.register(p, model_dir, Path(evaluation) / METRICS_FILE, out_dir, rescore=rescore,
                            data_version=data_version or None)
    return {**res, "auto_promote": auto_promote}


def promote_task(config: str, registration: str | Path, run_name: str, out_dir: str | Path) -> dict[str, Any]:
    """The promote task: move `champion` to the version the register task added, on the test set
    the register task's gate compared on."""
    from affectflow.contracts.workdir import RESULT_FILE
    from affectflow.tracking import registry

    p = stage_params(config, "register")
    reg = read_json(Path(registration) / RESULT_FILE)
    version = str(reg["version"])
    gate = reg.get("gate") or {}
    res = registry.Registry(p).promote(version, reason=f"pipeline run {run_name}",
                                       on=gate.get("test_manifest_hash"), rescored=bool(gate.get("rescored")))
    write_result(Path(out_dir) / RESULT_FILE, res)
    return res


# ----------------------------------------------------------------------------- metrics
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


# ----------------------------------------------------------------------------- reports
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


# ----------------------------------------------------------------------------- switched-off branches
def mark_skipped(artifact: Any, reason: str) -> None:
    """Placeholder output artifact of a switched-off branch (no augmentation / no DANN)."""
    write_skipped(artifact.path, reason)
    artifact.metadata["skipped"] = True


def optional_input(artifact: Any, inner: str = "") -> Path | None:
    """The artifact's folder (or `inner` inside it), or None when the branch that made it was off."""
    return optional_dir(artifact.path, inner)


def write_result(path: str | Path, result: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(result))


def read_json(path: str | Path) -> Any:
    """A JSON file another task wrote; the error names the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None


# ----------------------------------------------------------------------------- models and evaluation
MODEL_SUBDIR = "model"
"""Train writes its model folder here inside the task's Model artifact (`train/model/`)."""


def model_dir(artifact: Any) -> Path:
    """The model folder inside a train task's Model artifact."""
    sub = (getattr(artifact, "metadata", None) or {}).get("model_dir") or MODEL_SUBDIR
    return Path(artifact.path) / sub


def point(value: Any) -> float:
    """A metric's point estimate: a number, or {value|mean|point: number, ...} with its CI."""
    if isinstance(value, Mapping):
        for key in ("value", "mean", "point"):
            if key in value:
                return point(value[key])
        raise ValueError(f"metric {value!r}: no value/mean/point field")
    return float(value)


CONFUSION_KEYS = ("confusion", "confusion_matrix")
BREAKDOWNS = ("per_speaker", "per_gender")
"""Per-group tables of evaluate's result: in its report, too long for the Metrics panel."""


def _scores(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in (*CONFUSION_KEYS, *BREAKDOWNS, "classes")}


def headline_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What the Metrics panel shows: UAR / WA / macro-F1 with intervals, per-class recall and
    cross-corpus scores; not the confusion matrix nor the per-speaker tables."""
    out = _scores(result)
    test = result.get("test")
    if isinstance(test, Mapping):
        out["test"] = _scores(test)
    cross = result.get("cross_corpus")
    if isinstance(cross, Mapping):
        out["cross_corpus"] = {name: _scores(r) for name, r in cross.items() if isinstance(r, Mapping)}
    return out


def confusion_of(result: Mapping[str, Any]) -> tuple[list[str], list[list[int]]]:
    """(classes, rows = true class, columns = predicted) from evaluate's result.

    Accepted shapes, at the top level or under `test`: `confusion: [[...]]` beside `classes`, or
    `confusion: {classes: [...], matrix: [[...]]}`.
    """
    scopes = [result] + ([result["test"]] if isinstance(result.get("test"), Mapping) else [])
    for scope in scopes:
        for key in CONFUSION_KEYS:
            if key not in scope:
                continue
            value = scope[key]
            if isinstance(value, Mapping):
                classes, matrix = value.get("classes") or scope.get("classes"), value.get("matrix")
            else:
                classes, matrix = scope.get("classes"), value
            if classes is None or matrix is None:
                raise ValueError(f"evaluate result field {key!r}: needs 'classes' and 'matrix'")
            rows = [[round(float(x)) for x in row] for row in matrix]
            if len(rows) != len(classes) or any(len(r) != len(classes) for r in rows):
                raise ValueError(f"evaluate result field {key!r}: matrix is not {len(classes)}x{len(classes)}")
            return [str(c) for c in classes], rows
    raise ValueError(f"evaluate result: no confusion matrix (fields {', '.join(CONFUSION_KEYS)}, "
                     "top level or under 'test')")


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
        from affectflow.tracking.guard import GuardDecision, GuardRow

        g = result["guard"]
        intro += "\n\n" + GuardDecision(g["passed"], g["reason"], g["margin"], [GuardRow(**r) for r in g["rows"]]).markdown()
    keep = ("model_uri", "aliases", "champion", "previous_champion", "promoted", "forced", "already_registered",
            "model_content_hash", "data_version", "comparison", "metrics", "lineage", "tracking_uri")
    heading = f"{title}: {result.get('model_name', '')} v{result.get('version', '?')}"
    return summary_markdown(heading, {k: result[k] for k in keep if k in result and result[k] is not None}, intro)


# ----------------------------------------------------------------------------- exit handler
STATUS_EXPERIMENT_SUFFIX = "-pipelines"
"""Run-status records go to `<tracking.experiment>-pipelines`, apart from the training runs."""


def record_status(status: Any, configured_uri: str, experiment: str, artifact_location: str = "") -> str:
    """Record a pipeline run's final state in MLflow (the exit handler's job); returns the state.

    A failure to reach MLflow is printed, not raised: the exit task must not turn a finished run
    into a failed one, and a failed run is already marked failed in Kubeflow.
    """
    info = {"state": str(getattr(status, "state", "UNKNOWN")),
            "job": str(getattr(status, "pipeline_job_resource_name", "") or ""),
            "task": str(getattr(status, "pipeline_task_name", "") or ""),
            "error_code": str(getattr(status, "error_code", "") or ""),
            "error_message": str(getattr(status, "error_message", "") or "")}
    print(f"pipeline run {info['job']}: {info['state']}" + (f" ({info['error_message']})"
                                                           if info["error_message"] else ""))
    try:
        from mlflow import MlflowClient

        from affectflow.tracking.uri import resolve_uri

        uri = resolve_uri(tracking_uri(configured_uri))
        client = MlflowClient(tracking_uri=uri)
        name = experiment + STATUS_EXPERIMENT_SUFFIX
        exp = client.get_experiment_by_name(name)
        from affectflow.tracking.uri import experiment_artifact_location

        root = experiment_artifact_location(uri, artifact_location)
        location = f"{root.rstrip('/')}/{name}" if root else None
        exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=location)
        tags = {f"pipeline.{k}": v[:5000] for k, v in info.items() if v}
        run = client.create_run(exp_id, run_name=info["job"] or "pipeline-run", tags=tags)
        client.set_terminated(run.info.run_id, status="FINISHED" if info["state"] == "SUCCEEDED" else "FAILED")
        print(f"recorded in MLflow {uri}: experiment {name!r}, run {run.info.run_id}")
    except Exception as e:  # recording is best effort; say why it did not happen
        print(f"could not record the run status in MLflow ({configured_uri}): {e}")
    return info["state"]
