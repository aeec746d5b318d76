"""`affectflow pipeline rehearse`: the compiled pipeline executed the way a cluster executes it.

1. the CPU image's root filesystem, built from containers/Dockerfile.cpu without Docker (image.py);
2. SeaweedFS (S3) and the MLflow server from that root on 127.0.0.1, behind MLflow's basic-auth app
   as the chart runs it by default (its admin user in every client's environment); a small corpus uploaded to S3
   (generated RAVDESS-layout audio, or speakers of ../shared/data/ravdess with --corpus shared);
3. every task of the committed IR in DAG order (dag.py), each launched as KFP's launcher does
   (launcher.py) in a fresh overlay of the root; S3 is the only thing tasks share;
4. the KServe predictor from the same root, answering the README's own v2 request;
5. a per-task table (task, root, seconds, status, cause) and report.{md,json} under --out.

What this does not show (GPU scheduling, KubeRay, Knative, multi-node DDP): docs/REHEARSAL.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectflow.orchestration.ir import PIPELINE_NAME, PipelineError
from affectflow.orchestration.rehearsal.dag import FAILED, SKIPPED, SUCCEEDED, Outcome, Walker
from affectflow.orchestration.rehearsal.image import Builder, Image, cache_root
from affectflow.orchestration.rehearsal.launcher import Launcher
from affectflow.orchestration.rehearsal.services import (
    MlflowAdmin,
    S3Store,
    mlflow_server,
    mlflow_status,
    predictor,
    seaweedfs,
    upload_tree,
)
from affectflow.runtime.netutil import free_ports
from affectflow.storage import atomic_write_json

BUCKET = "affectflow"
PIPELINE_ROOT = f"s3://{BUCKET}/v2/artifacts"  # KFP's default root is minio://mlpipeline/v2/artifacts
CORPUS_PREFIX = "corpora"
# The local torch wheel stands in for download.pytorch.org (not reachable here); pip still resolves torch's
# dependencies from PyPI and takes the CPU wheel from PIP_FIND_LINKS, as `docker build --build-arg` would.
BUILD_ARGS = {"TORCH_INDEX": "https://pypi.org/simple"}
_README_REQUEST = re.compile(r"printf '(\{\"inputs\".*?)' \"\$\(base64 -w0 clip\.wav\)\"")
_README_URL = re.compile(r"curl -s localhost:\d+(/v2/models/[^/\s]+/infer)")


@dataclass
class Row:
    task: str
    root: str
    seconds: float
    status: str
    cause: str = ""


@dataclass
class Report:
    started: str
    command: str
    image: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    registered: str = ""
    prediction: dict[str, Any] = field(default_factory=dict)
    status: str = "FAILED"
    wall_s: float = 0.0

    def table(self) -> str:
        lines = ["| task | root | seconds | status | cause |", "|---|---|---:|---|---|"]
        lines += [f"| {r.task} | {r.root} | {r.seconds:.1f} | {r.status} | {r.cause.replace('|', '/')} |"
                  for r in self.rows]
        return "\n".join(lines)


def readme_request(readme: Path) -> tuple[str, str]:
    """The v2 request template (with `%s` for the base64 clip) and the URL path the README sends."""
    text = readme.read_text()
    m, u = _README_REQUEST.search(text), _README_URL.search(text)
    if not m or not u:
        raise PipelineError(f"{readme}: the KServe request (printf '{{\"inputs\": ...}}' | curl .../infer) not found")
    return m.group(1), u.group(1)


def corpus_folder(kind: str, into: Path, speakers: int) -> Path:
    """A small corpus in RAVDESS layout: generated clips, or the first speakers of the shared copy."""
    if kind == "generated":
        from affectflow.corpora.demo import make_ravdess_like

        return make_ravdess_like(into / "ravdess", actors=speakers, emotions=("angry", "happy", "neutral", "sad"),
                                 clips_per_emotion=4)
    shared = Path("../shared/data/ravdess")
    actors = sorted(p for p in shared.glob("Actor_*") if p.is_dir())[:speakers]
    if not actors:
        raise PipelineError(f"{shared}: no Actor_* folders (use --corpus generated)")
    for a in actors:
        shutil.copytree(a, into / "ravdess" / a.name)
    return into / "ravdess"


def target_folder(kind: str, into: Path, speakers: int) -> Path:
    """An unlabelled adaptation corpus for DANN (`pretrain`): the first EmoDB speakers of ../shared/data."""
    if kind != "emodb":
        raise PipelineError(f"target corpus {kind!r}: only emodb (from ../shared/data) is supported")
    shared = Path("../shared/data/emodb")
    files = sorted(shared.rglob("*.wav"))
    keep = sorted({f.name[:2] for f in files})[:speakers]
    if not keep:
        raise PipelineError(f"{shared}: no EmoDB clips")
    for f in files:
        if f.name[:2] in keep:
            dest = into / "emodb" / f.relative_to(shared)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
    return into / "emodb"


def first_clip(folder: Path) -> Path:
    """The clip the README's request carries: the corpus's first audio file (wav, flac, ...)."""
    from affectflow.corpora import AUDIO_EXTENSIONS

    clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not clips:
        raise PipelineError(f"{folder}: no audio file for the predictor's request")
    return clips[0]


def rehearse(repo: Path, out: Path, *, params_path: Path, overrides: Sequence[str] = (), corpus: str = "generated",
             speakers: int = 8, target: str | None = None, task_timeout_s: float = 3600,
             echo: Callable[[str], None] = print) -> Report:
    """The whole rehearsal; the report says what passed and what failed (it raises only on set-up errors)."""
    from affectflow.config import load_params
    from affectflow.orchestration.ir import documents
    from affectflow.orchestration.run_form import pipeline_arguments

    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    command=" ".join(["affectflow pipeline rehearse", *(f"--set {o}" for o in overrides),
                                      f"--corpus {corpus} --speakers {speakers}",
                                      *([f"--target-corpus {target}"] if target else [])]),
                    image={})
    echo(f"[1/4] image root from containers/Dockerfile.cpu (layers cached in {cache_root()})")
    image = Builder(repo / "containers" / "Dockerfile.cpu", repo, build_args=BUILD_ARGS, log=out / "image-build.log",
                    echo=echo).build()
    report.image = {"key": image.key[:16], "layers": len(image.layers), "steps": list(image.steps)}
    root_name = f"cpu@{image.key[:8]}"
    spec, platform_doc = documents(repo / "pipelines" / "compiled" / f"{PIPELINE_NAME}.yaml")[:2]
    platform = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    request_template, request_path = readme_request(repo / "README.md")

    work = Path(tempfile.mkdtemp(prefix="rehearsal-", dir=cache_root()))
    try:
        with seaweedfs(work / "seaweedfs", BUCKET) as store:
            echo(f"[2/4] S3 (SeaweedFS) at {store.endpoint}, MLflow from the image root")
            with tempfile.TemporaryDirectory() as tmp:
                folder = corpus_folder(corpus, Path(tmp), speakers)
                n = upload_tree(store, folder, f"{CORPUS_PREFIX}/ravdess")
                clip = first_clip(folder).read_bytes()
                corpora = [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}]
                if target:
                    m = upload_tree(store, target_folder(target, Path(tmp), speakers), f"{CORPUS_PREFIX}/{target}")
                    corpora.append({"name": target, "adapter": target, "root": target, "role": "target"})
                    echo(f"      target corpus: {m} objects at s3://{BUCKET}/{CORPUS_PREFIX}/{target}")
            echo(f"      corpus: {n} objects at s3://{BUCKET}/{CORPUS_PREFIX}/ravdess ({corpus}); none on any task's disk")
            mlflow_port, predictor_port = free_ports(2)
            tracking = f"http://127.0.0.1:{mlflow_port}"
            admin = MlflowAdmin.generate()
            auth_script = (repo / "charts" / "affectflow" / "files" / "mlflow_auth.py").read_text()
            mlflow = mlflow_server(image, store, work, mlflow_port, auth_script=auth_script, admin=admin)
            try:
                if _check_auth(report, tracking, admin, root_name, echo):
                    _run_pipeline(report, spec, platform, image, store, work, out, tracking, root_name, params_path,
                                  [f"ingest.corpora={json.dumps(corpora)}", *overrides], task_timeout_s, echo,
                                  load_params, pipeline_arguments, admin)
                if report.status == SUCCEEDED:
                    _serve(report, image, store, work, tracking, predictor_port, request_template, request_path,
                           clip, root_name, params_path, overrides, echo, load_params, admin)
            finally:
                mlflow.stop()
                shutil.copy2(mlflow.log, out / "mlflow.log")
    finally:
        for f in work.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy2(f, out / f.name)
        shutil.rmtree(work, ignore_errors=True)
    report.wall_s = round(time.monotonic() - t_start, 1)
    write_report(report, out)
    return report


def _check_auth(report: Report, tracking: str, admin: MlflowAdmin, root_name: str,
                echo: Callable[[str], None]) -> bool:
    """MLflow refuses a request without a user and answers the admin (as the chart's server must)."""
    anonymous, with_admin = mlflow_status(tracking), mlflow_status(tracking, admin)
    ok = anonymous == 401 and with_admin == 200
    status = "SUCCESS" if ok else "FAILED"
    cause = f"basic-auth: HTTP {anonymous} without a user, {with_admin} as the admin"
    report.rows.append(Row("mlflow (auth)", root_name, 0.0, status, cause))
    echo(f"      {'mlflow (auth)':<20} {status:<8} {0.0:7.1f} s  {cause}")
    if not ok:
        report.status = FAILED
    return ok


def _run_pipeline(report: Report, spec: dict, platform: dict, image: Image, store: S3Store, work: Path, out: Path,
                  tracking: str, root_name: str, params_path: Path, overrides: Sequence[str], timeout_s: float,
                  echo: Callable[[str], None], load_params: Any, pipeline_arguments: Any,
                  admin: MlflowAdmin) -> None:
    base = load_params(params_path)
    # as the chart's registration Job sets them: corpora and the deployment's feature store on S3
    params = load_params(params_path, [f"paths.data_root=s3://{BUCKET}/{CORPUS_PREFIX}",
                                       f"features.store=s3://{BUCKET}/feature-store", *overrides])
    arguments = pipeline_arguments(params, base)
    run_id = uuid.uuid4().hex[:12]
    job = f"{PIPELINE_NAME}-rehearsal-{run_id}"
    secrets = {
        params.pipeline.s3_secret: store.env(),
        params.pipeline.mlflow_secret: {"MLFLOW_TRACKING_URI": tracking, **admin.client_env()},
    }
    config_maps = {params.pipeline.env_config_map: {"RAY_ADDRESS": "",
                                                    "AFFECTFLOW_RAY_STORAGE": f"s3://{BUCKET}/ray"}}
    launcher = Launcher(image=image, s3=store.client(), pipeline_root=PIPELINE_ROOT, pipeline=PIPELINE_NAME,
                        run_id=run_id, job_name=job, platform=platform, secrets=secrets, config_maps=config_maps,
                        work=work / "tasks", timeout_s=timeout_s, echo=echo)
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    echo(f"[3/4] every task of the IR in DAG order, run {job}, pipeline root {PIPELINE_ROOT}")
    echo(f"      arguments: {json.dumps(arguments)}")

    def on_task(name: str, outcome: Outcome) -> None:
        secs = float(outcome.parameters.pop("_seconds", 0.0))
        status = {SUCCEEDED: "SUCCESS", FAILED: "FAILED", SKIPPED: "SKIPPED"}.get(outcome.state, outcome.state)
        report.rows.append(Row(name, root_name if outcome.state in (SUCCEEDED, FAILED) else "-", secs, status,
                               outcome.cause))
        echo(f"      {name:<20} {status:<8} {secs:7.1f} s  {outcome.cause}")
        log = work / "tasks" / f"{name}.log"
        if log.is_file():
            shutil.copy2(log, out / f"task-{name}.log")

    walker = Walker(spec, launcher, job_name=job, on_task=on_task)
    result = walker.run(arguments)
    ran = [r for r in report.rows if r.status in ("SUCCESS", "FAILED")]
    report.status = SUCCEEDED if result.state == SUCCEEDED and all(r.status == "SUCCESS" for r in ran) else FAILED


def _serve(report: Report, image: Image, store: S3Store, work: Path, tracking: str, port: int, template: str,
           path: str, clip: bytes, root_name: str, params_path: Path, overrides: Sequence[str],
           echo: Callable[[str], None], load_params: Any, admin: MlflowAdmin) -> None:
    params = load_params(params_path, list(overrides))
    registered = params.registry.model_name
    model_name = path.split("/")[3]
    echo(f"[4/4] KServe predictor from the image root: models:/{registered}@champion, README's request to {path}")
    t0 = time.monotonic()
    server = None
    try:
        server = predictor(image, store, work, tracking_uri=tracking, model_name=model_name, registered=registered,
                           port=port, admin=admin)
        body = (template % base64.b64encode(clip).decode()).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
            by_name = {o["name"]: o["data"][0] for o in answer.get("outputs") or []}  # outputs by name, not place
            status, cause = "SUCCESS", f"HTTP 200, label {by_name.get('label')!r}, status " \
                                       f"{by_name.get('status')!r}, version {answer.get('model_version')}"
        except urllib.error.HTTPError as e:
            answer = {"http_status": e.code, "body": e.read().decode(errors="replace")[:500]}
            status, cause = "FAILED", f"HTTP {e.code}: {answer['body'][:150]}"
        report.prediction = {"request_path": path, "answer": answer}
    except PipelineError as e:  # the first line says what, the log's last line why
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        status, cause = "FAILED", (lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else ""))[:300]
    finally:
        if server is not None:
            server.stop()
    report.registered = f"models:/{registered}@champion"
    report.rows.append(Row("predictor (KServe)", root_name, round(time.monotonic() - t0, 1), status, cause))
    echo(f"      {'predictor (KServe)':<20} {status:<8} {time.monotonic() - t0:7.1f} s  {cause}")
    if status != "SUCCESS":
        report.status = FAILED


def write_report(report: Report, out: Path) -> None:
    data = {**report.__dict__, "rows": [r.__dict__ for r in report.rows]}
    atomic_write_json(out / "report.json", data)
    md = [f"# Cluster rehearsal, {report.started}: {report.status} in {report.wall_s:.0f} s", "",
          f"Command: `{report.command}`", "",
          f"Image: containers/Dockerfile.cpu, {report.image.get('layers')} layers, key {report.image.get('key')}", "",
          report.table(), ""]
    if report.prediction:
        md += ["Predictor answer to the README's request:", "", "```json",
               json.dumps(report.prediction.get("answer"), indent=1)[:3000], "```", ""]
    (out / "report.md").write_text("\n".join(md))
