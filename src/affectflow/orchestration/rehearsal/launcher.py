"""KFP's launcher for one container task, emulated (after backend/src/v2/component/launcher_v2.go):

1. output URIs under the pipeline root, `<root>/<pipeline>/<run id>/<task>/<output key>`;
2. the executor input (input parameter values, input artifacts with their URIs, output artifact URIs,
   output parameter files, `outputFile` = /tmp/kfp_outputs/output_metadata.json);
3. the executor's command and args from the IR with every placeholder resolved (kfp.local's resolver:
   `{{$}}`, `{{$.inputs.parameters['x']}}`, `{{$.outputs.artifacts['x'].path}}`, job / task names);
4. input artifacts downloaded from S3 to the local paths KFP derives from their URIs (`s3://b/k` ->
   `/s3/b/k`), output folders created;
5. the command run in a fresh root of the image (chroot.py) as the pod's securityContext user, with the
   IR's env, the kubernetes platform's secretAsEnv / configMapAsEnv and emptyDirs;
6. on exit 0: the executor output read, every output artifact uploaded from its local path to its URI,
   output parameters taken from the executor output (or the parameter files).

Not emulated (a real cluster's): the driver's MLMD records and cache, resource requests / limits and
GPU scheduling (GPU tasks run in the CPU image; activeDeadlineSeconds is kept as a timeout), node selectors and tolerations, image pulls, the
pod's service account; S3 I/O is boto3 in the host process, not the launcher's Go blob library.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.orchestration.ir import PipelineError
from affectflow.orchestration.rehearsal.chroot import Bind, Container, _clear
from affectflow.orchestration.rehearsal.dag import FAILED, SUCCEEDED, ContainerTask, Outcome
from affectflow.orchestration.rehearsal.image import Image

OUTPUT_METADATA = "/tmp/kfp_outputs/output_metadata.json"
PARAM_OUTPUT_DIR = "/tmp/kfp/outputs"
EMPTY_DIRS = ("/s3", "/minio", "/gcs", "/tmp")
LOCAL_PREFIX = {"s3://": "/s3/", "minio://": "/minio/", "gs://": "/gcs/"}


def local_path(uri: str) -> str:
    """The path KFP's executor reads / writes for an artifact URI (kfp.dsl.types.artifact_types)."""
    for scheme, prefix in LOCAL_PREFIX.items():
        if uri.startswith(scheme):
            return prefix + uri[len(scheme):]
    raise PipelineError(f"artifact URI {uri!r}: only s3://, minio:// and gs:// are staged by the launcher")


def output_uri(pipeline_root: str, pipeline: str, run_id: str, task: str, key: str) -> str:
    return f"{pipeline_root.rstrip('/')}/{pipeline}/{run_id}/{task}/{key}"


def executor_input(task: ContainerTask, *, pipeline_root: str, pipeline: str, run_id: str) -> dict[str, Any]:
    """The ExecutorInput JSON the launcher hands the executor (`{{$}}`)."""
    comp = task.component
    outs = comp.get("outputDefinitions") or {}
    artifacts = {
        key: {"artifacts": [{"name": key, "type": spec["artifactType"], "metadata": {},
                             "uri": output_uri(pipeline_root, pipeline, run_id, task.name, key)}]}
        for key, spec in (outs.get("artifacts") or {}).items()
    }
    params = {key: {"outputFile": f"{PARAM_OUTPUT_DIR}/{key}"} for key in (outs.get("parameters") or {})}
    return {
        "inputs": {"parameterValues": dict(task.parameters),
                   "artifacts": {k: {"artifacts": v} for k, v in task.artifacts.items()}},
        "outputs": {"artifacts": artifacts, "parameters": params, "outputFile": OUTPUT_METADATA},
    }


def resolve_command(task: ContainerTask, ex_input: dict[str, Any], *, job_name: str, pipeline_root: str,
                    run_id: str) -> list[str]:
    """The container's argv: the IR's command + args with placeholders resolved as KFP does."""
    from kfp.local.placeholder_utils import replace_placeholders

    container = task.executor["container"]
    return replace_placeholders(list(container.get("command") or []) + list(container.get("args") or []),
                                ex_input, pipeline_resource_name=job_name, task_resource_name=task.name,
                                pipeline_root=pipeline_root, unique_pipeline_id=run_id)


def pod_env(task: ContainerTask, image: Image, platform: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]],
            config_maps: Mapping[str, Mapping[str, str]], home: str) -> dict[str, str]:
    """Image env, then the IR container's env, then secret / config-map keys as the pod spec maps them."""
    env = {**image.env, "HOME": home}
    for e in task.executor["container"].get("env") or []:
        env[e["name"]] = e.get("value", "")
    k8s = platform.get(task.executor_label) or {}
    for source, table in (("secretAsEnv", secrets), ("configMapAsEnv", config_maps)):
        for ref in k8s.get(source) or []:
            name = ref.get("secretName") or ref.get("configMapName")
            values = table.get(name)
            if values is None:
                if ref.get("optional"):
                    continue
                raise PipelineError(f"{task.name}: {source} {name!r} is required and the rehearsal has no such object")
            for kv in ref.get("keyToEnv") or []:
                key = kv.get("secretKey") or kv.get("configMapKey")
                if key in values:
                    env[kv["envVar"]] = values[key]
                elif not ref.get("optional"):
                    raise PipelineError(f"{task.name}: {source} {name!r} has no key {key!r}")
    return env


def pod_user(task: ContainerTask, platform: Mapping[str, Any]) -> str | None:
    sc = (platform.get(task.executor_label) or {}).get("securityContext") or {}
    if "runAsUser" not in sc:
        return None
    return f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"


def pod_deadline(task: ContainerTask, platform: Mapping[str, Any], cap: float | None) -> float | None:
    """The task's activeDeadlineSeconds (kfp-kubernetes `set_timeout`), capped by the rehearsal's own limit."""
    deadline = (platform.get(task.executor_label) or {}).get("activeDeadlineSeconds")
    values = [float(v) for v in (deadline, cap) if v]
    return min(values) if values else None


def pod_volumes(task: ContainerTask, platform: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod's emptyDir mount paths, plus the launcher's staging roots (/s3, /minio, /gcs, /tmp),
    which the rehearsal always mounts: it stages on the host side."""
    mounts = {m["mountPath"] for m in (platform.get(task.executor_label) or {}).get("emptyDirMounts") or []}
    return tuple(sorted(mounts | set(EMPTY_DIRS)))


def cause_line(log: Path) -> str:
    """The most telling line of a failed task's log: the last `error`-ish line, else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "exception" in low or "failed" in low:
            return ln[:200]
    return lines[-1][:200] if lines else "no output"


@dataclass
class Launcher:
    """Runs ContainerTasks of one pipeline run, each in its own fresh root; S3 is all they share."""

    image: Image
    s3: Any  # a boto3 S3 client for the pipeline root's endpoint
    pipeline_root: str  # s3://bucket/prefix
    pipeline: str
    run_id: str
    job_name: str
    platform: Mapping[str, Any]  # platforms.kubernetes.deploymentSpec.executors
    secrets: Mapping[str, Mapping[str, str]]
    config_maps: Mapping[str, Mapping[str, str]]
    work: Path  # per-task state on the host (volumes, logs)
    timeout_s: float | None = None
    echo: Callable[[str], None] = print

    def __call__(self, task: ContainerTask) -> Outcome:
        t0 = time.monotonic()
        tdir = self.work / task.name
        _clear(tdir)
        log = self.work / f"{task.name}.log"
        log.unlink(missing_ok=True)
        try:
            outcome = self._launch(task, tdir, log)
        except Exception as e:  # a staging / spec failure is the task's failure, as on a cluster
            outcome = Outcome(FAILED, cause=f"launcher: {e}"[:200])
        finally:
            _clear(tdir)
        outcome.parameters.setdefault("_seconds", round(time.monotonic() - t0, 1))
        return outcome

    def _launch(self, task: ContainerTask, tdir: Path, log: Path) -> Outcome:
        ex_input = executor_input(task, pipeline_root=self.pipeline_root, pipeline=self.pipeline, run_id=self.run_id)
        argv = resolve_command(task, ex_input, job_name=self.job_name, pipeline_root=self.pipeline_root,
                               run_id=self.run_id)
        user = pod_user(task, self.platform)
        uid, gid = (int(x) for x in user.split(":")) if user else (0, 0)
        volumes = {d: tdir / "volumes" / d.strip("/").replace("/", "_") for d in pod_volumes(task, self.platform)}
        for path in volumes.values():
            path.mkdir(parents=True)
            path.chmod(0o777)  # an emptyDir is world-writable
        for arts in task.artifacts.values():
            for art in arts:
                self._download(art["uri"], self._host(local_path(art["uri"]), volumes))
        for spec in ex_input["outputs"]["artifacts"].values():
            self._mkdirs(self._host(local_path(spec["artifacts"][0]["uri"]), volumes).parent, volumes, uid, gid)
        for d in (Path(OUTPUT_METADATA).parent, Path(PARAM_OUTPUT_DIR)):
            self._mkdirs(self._host(str(d), volumes), volumes, uid, gid)
        home = "/home/affectflow" if uid else "/root"
        env = pod_env(task, self.image, self.platform, self.secrets, self.config_maps, home)
        with open(log, "w") as f:
            f.write(f"# task {task.name}: {' '.join(argv[:3])} ... ({len(argv)} args)\n# user {user}\n")
        container = Container(layers=self.image.layers, env=env, command=argv, user=user, cwd=self.image.workdir,
                              binds=tuple(Bind(path, d) for d, path in volumes.items()), scratch=tdir)
        rc = container.run(log, timeout_s=pod_deadline(task, self.platform, self.timeout_s))
        if rc != 0:
            return Outcome(FAILED, cause=("timed out" if rc == 124 else f"exit {rc}: ") + cause_line(log))
        return self._collect(ex_input, volumes)

    def _collect(self, ex_input: dict[str, Any], volumes: Mapping[str, Path]) -> Outcome:
        meta_path = self._host(OUTPUT_METADATA, volumes)
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        out = Outcome(SUCCEEDED)
        produced = meta.get("artifacts") or {}
        for key, spec in ex_input["outputs"]["artifacts"].items():
            arts = (produced.get(key) or spec)["artifacts"]
            for art in arts:
                art.setdefault("type", spec["artifacts"][0]["type"])
                self._upload(self._host(local_path(art["uri"]), volumes), art["uri"])
            out.artifacts[key] = arts
        values = meta.get("parameterValues") or {}
        for key, spec in ex_input["outputs"]["parameters"].items():
            if key in values:
                out.parameters[key] = values[key]
            else:
                f = self._host(spec["outputFile"], volumes)
                if f.is_file():
                    text = f.read_text()
                    try:
                        out.parameters[key] = json.loads(text)
                    except json.JSONDecodeError:
                        out.parameters[key] = text
        return out

    @staticmethod
    def _host(path: str, volumes: Mapping[str, Path]) -> Path:
        """The host path behind a container path inside one of the pod's volumes."""
        for mount, host in volumes.items():
            if path == mount or path.startswith(mount + "/"):
                return host / path[len(mount):].lstrip("/")
        raise PipelineError(f"{path} is not on a volume of the pod")

    @staticmethod
    def _mkdirs(path: Path, volumes: Mapping[str, Path], uid: int, gid: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        roots = set(volumes.values())
        p = path
        while p not in roots and p != p.parent:
            os.chown(p, uid, gid)
            p = p.parent

    def _split(self, uri: str) -> tuple[str, str]:
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        return bucket, key

    def _download(self, uri: str, dest: Path) -> None:
        """A file object, or every object under the prefix (a directory artifact)."""
        bucket, key = self._split(uri)
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            keys += [o["Key"] for o in page.get("Contents") or []]
        if key in keys:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(dest))
        else:
            below = [k for k in keys if k.startswith(key.rstrip("/") + "/")]
            if not below:
                raise PipelineError(f"input artifact {uri} is not in S3")
            for k in below:
                target = dest / k[len(key.rstrip("/")) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, k, str(target))
        for root, dirs, files in os.walk(dest.parent if dest.is_file() else dest):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
            for n in files:
                os.chmod(os.path.join(root, n), 0o644)

    def _upload(self, src: Path, uri: str) -> None:
        bucket, key = self._split(uri)
        if src.is_file():
            self.s3.upload_file(str(src), bucket, key)
        elif src.is_dir():
            for f in sorted(p for p in src.rglob("*") if p.is_file()):
                self.s3.upload_file(str(f), bucket, f"{key.rstrip('/')}/{f.relative_to(src).as_posix()}")
        else:
            raise PipelineError(f"output artifact {uri}: the task wrote nothing at {local_path(uri)}")
