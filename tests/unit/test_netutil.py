"""The one start-up wait of the local servers (`affectflow.runtime.netutil.wait_ready`): ready when
the health URL answers, a named error with the log's tail when the server dies or never answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from affectflow.runtime.netutil import ServerNotReady, free_port, stop_group, wait_ready


def _start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def test_a_server_is_ready_when_its_url_answers(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    proc = _start(["-m", "http.server", str(port), "--bind", "127.0.0.1"], tmp_path / "s.log", tmp_path)
    try:
        waited = wait_ready(f"http://127.0.0.1:{port}/health", proc, tmp_path / "s.log", "a file server", 60,
                            poll_s=0.05)
        assert waited >= 0 and proc.poll() is None
    finally:
        stop_group(proc, 5)


def test_a_server_that_exits_is_named_with_its_exit_code_and_log(tmp_path: Path) -> None:
    proc = _start(["-c", "print('port already taken'); raise SystemExit(3)"], tmp_path / "s.log", tmp_path)
    with pytest.raises(ServerNotReady, match=r"(?s)the predictor did not come up on http://127.0.0.1:\d+/ready "
                                             r"\(exit code 3\).*port already taken"):
        wait_ready(f"http://127.0.0.1:{free_port()}/ready", proc, tmp_path / "s.log", "the predictor", 60,
                   poll_s=0.05)


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    proc = _start(["-c", "import time; time.sleep(30)"], tmp_path / "s.log", tmp_path)
    try:
        with pytest.raises(ServerNotReady, match=r"mlflow server did not come up .*\(not ready after 0 s\)"):
            wait_ready(f"http://127.0.0.1:{free_port()}/health", proc, tmp_path / "s.log", "mlflow server", 0.2,
                       poll_s=0.05)
    finally:
        stop_group(proc, 5)
