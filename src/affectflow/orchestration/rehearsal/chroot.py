"""One container of the rehearsal: a fresh overlay over an image's layers, entered with
`unshare --mount --pid --fork` + `chroot` (no Docker engine or podman here), through
`scripts/rehearsal-chroot.sh`.

Each container gets its own upper directory, so nothing it writes reaches another container; the
pod's emptyDirs and any other volume are bind mounts the caller names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from affectflow.orchestration.ir import PipelineError

SCRIPT = Path(__file__).resolve().parents[4] / "scripts" / "rehearsal-chroot.sh"


def chroot_script() -> Path:
    """The mount-and-chroot helper (in a checkout: scripts/; the rehearsal is a checkout-only tool)."""
    if not SCRIPT.is_file():
        raise PipelineError(f"{SCRIPT} not found: the rehearsal runs from a checkout of the repository")
    return SCRIPT


@dataclass(frozen=True)
class Bind:
    """A host path seen at `target` inside the container (a pod volume)."""

    source: Path
    target: str
    read_only: bool = False

    def spec(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass
class Container:
    """A command in a fresh root made of `layers` (bottom first) plus a private upper dir."""

    layers: Sequence[Path]
    env: Mapping[str, str]
    command: Sequence[str]
    binds: Sequence[Bind] = ()
    user: str | None = None
    cwd: str = "/"
    upper: Path | None = None  # keep the writes here (an image build step); default: a throwaway dir
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def argv(self, state: Path) -> list[str]:
        """The full host command line; `state` holds upper/work/merged and the env file."""
        upper = self.upper or state / "upper"
        for d in (upper, state / "work", state / "merged"):
            d.mkdir(parents=True, exist_ok=True)
        env_file = state / "env"
        env_file.write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in self.env.items()))
        lowers = ":".join(str(p) for p in reversed(self.layers))
        argv = ["nice", "-n", "10", "unshare", "--mount", "--pid", "--fork", "--kill-child", "bash", str(chroot_script()), lowers,
                str(upper), str(state / "work"), str(state / "merged")]
        for b in self.binds:
            argv += ["--bind", b.spec()]
        if self.user:
            argv += ["--user", self.user]
        argv += ["--cwd", self.cwd, "--", str(env_file), *self.command]
        return argv

    def run(self, log: Path, timeout_s: float | None = None) -> int:
        """Run to completion, stdout and stderr into `log`; the exit status."""
        with tempfile.TemporaryDirectory(dir=self.scratch, prefix="container-") as tmp, open(log, "ab") as out:
            proc = subprocess.Popen(self.argv(Path(tmp)), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return 124
            finally:
                _clear(Path(tmp))

    def start(self, state: Path, log: Path) -> subprocess.Popen:
        """Start in the background (a server); the caller stops it and removes `state`."""
        out = open(log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        return subprocess.Popen(self.argv(state), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _clear(path: Path) -> None:
    """Remove a container's state (files written as another uid, overlay whiteouts included)."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=False)


def host_pip_env() -> dict[str, str]:
    """The host's PIP_* settings (find-links to the local torch wheel, CA bundle, timeouts)."""
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
