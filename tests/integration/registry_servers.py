"""Real servers for the registry tests: an `mlflow server` process on any backend store, and a
throwaway Postgres cluster (initdb / pg_ctl in a temporary folder, 127.0.0.1, a free port).

Both are started as their own process group and stopped at the end of the `with` block; every wait
is bounded. When the tests run as root (CI containers), Postgres runs as the `postgres` user of the
Debian package (initdb refuses root), through `runuser`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from affectflow.runtime.netutil import free_port, stop_group, wait_ready

STARTUP_TIMEOUT_S = 180.0
"""Server start (schema creation + app import) takes ~15 s on an idle laptop, far more on a busy CI box."""
SHUTDOWN_TIMEOUT_S = 15.0
PG_COMMAND_TIMEOUT_S = 120.0
PG_USER = "postgres"
"""The Debian package's system user; Postgres runs as it when the tests run as root."""


@contextlib.contextmanager
def mlflow_server(root: Path, backend_uri: str) -> Iterator[str]:
    """URL of a running `mlflow server` on `backend_uri` (job execution off, one worker, artifacts
    proxied to `root/artifacts`); `ServerNotReady` with the server log's tail when it does not come up."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri, "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                            start_new_session=True)  # own process group: uvicorn child dies with it
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc, log_path, "mlflow server", STARTUP_TIMEOUT_S)
        yield url
    finally:
        stop_group(proc, SHUTDOWN_TIMEOUT_S)
        log.close()


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: Debian's /usr/lib/postgresql/<major>/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_skip_reason() -> str | None:
    """Why the Postgres test cannot run here (None: it can)."""
    if postgres_bin() is None:
        return ("Postgres not installed: no /usr/lib/postgresql/*/bin/initdb and no initdb on PATH "
                "(apt-get install -y postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run Postgres as (initdb refuses root)"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing: cannot start Postgres as another user"
    try:
        import psycopg2  # noqa: F401  (the mlflow server's Postgres driver)
    except ImportError:
        return "psycopg2 not installed (pip install 'affectflow[dev]' or psycopg2-binary)"
    return None


@contextlib.contextmanager
def postgres(user: str = "mlflow", database: str = "mlflow") -> Iterator[str]:
    """A throwaway Postgres cluster; yields its SQLAlchemy URI (trust auth on 127.0.0.1 only)."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, postgres_skip_reason()
    root = Path(tempfile.mkdtemp(prefix="affectflow-pg-"))
    as_root = os.geteuid() == 0
    if as_root:  # the server's user must own its folder; /tmp itself is world-writable
        owner = pwd.getpwnam(PG_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    prefix = ["runuser", "-u", PG_USER, "--"] if as_root else []
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        out = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=PG_COMMAND_TIMEOUT_S)
        if out.returncode != 0:
            log = (root / "pg.log").read_text(errors="replace")[-2000:] if (root / "pg.log").exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}\n{log}")

    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w",
            "-t", str(int(PG_COMMAND_TIMEOUT_S)), "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start")
        started = True
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
        # The driver named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
