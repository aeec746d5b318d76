"""Local servers (MLflow tracking, `mlflow models serve`, SeaweedFS) started by the demo, tests and
benchmarks: a free port to bind them to and a readiness probe."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def seaweedfs_command(weed: str, root: Path, user: str, access_key: str, secret_key: str,
                      volume_size_mb: int = 256) -> tuple[list[str], int]:
    """(`weed server` command, its S3 port): a one-node SeaweedFS with the S3 gateway on 127.0.0.1,
    data under `root/data`, one identity allowed everything (written to `root/identities.json`)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{"name": user, "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "identities.json").write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc = free_ports(8)
    cmd = [weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
           f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
           "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={root / 'identities.json'}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.volumeSizeLimitMB={volume_size_mb}", "-volume.max=0",
           "-volume.preStopSeconds=0"]
    return cmd, s3_port


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (a health or ping endpoint); False while it cannot connect."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class ServerNotReady(RuntimeError):
    """A local server that exited, or did not answer, before it was ready; the message names it, its
    URL and exit code, and carries the tail of its log."""


def wait_ready(url: str, proc: subprocess.Popen[Any], log: Path | None, what: str, timeout_s: float,
               poll_s: float = 0.5) -> float:
    """Block until GET `url` (a health or ping endpoint) answers 200; the seconds it took. Raises
    `ServerNotReady` when `proc` exits first or `timeout_s` passes: the one start-up wait of the
    local servers the tests, benchmarks and demo start."""
    start = time.monotonic()
    while not http_ok(url):
        if proc.poll() is not None or time.monotonic() - start > timeout_s:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
            state = f"exit code {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout_s:.0f} s"
            raise ServerNotReady(f"{what} did not come up on {url} ({state}); log {log}:\n{tail}")
        time.sleep(poll_s)
    return time.monotonic() - start


def stop_group(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a server started with `start_new_session=True` and all its workers: SIGTERM to the
    process group, SIGKILL if it has not exited after `timeout` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
