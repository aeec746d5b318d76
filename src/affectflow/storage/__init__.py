"""Atomic, all-or-nothing writes: write to a temporary name beside the target, then rename.

An interrupted stage never leaves a file a later stage would trust: the final name appears only
once the content is complete (os.replace is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    # mkstemp creates 0600 whatever the umask; outputs are shared (volumes, other container users),
    # so they get the mode a plain open() would give.
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to `path`, on error removed.

    The temporary keeps the target's suffix so writers that dispatch on it (numpy, pyarrow,
    matplotlib) behave as for the final name.
    """
    target = Path(path)
    with _naming_full_disks(target):
        tmp = _tmp_sibling(target, target.suffix)
    try:
        with _naming_full_disks(target):
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole on success."""
    target = Path(path)
    with _naming_full_disks(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a folder from mkdir follows the umask
    try:
        with _naming_full_disks(target):
            yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DiskFullError(OSError):
    """No space (or quota) left while writing an output; the message names the output."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


@contextlib.contextmanager
def _naming_full_disks(target: Path) -> Iterator[None]:
    """ENOSPC / EDQUOT while writing `target` become one error naming it (errno 28 alone names
    no file), and the free space of its filesystem."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, DiskFullError):
            raise
        try:
            free = f"; {shutil.disk_usage(target.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = ""
        raise DiskFullError(e.errno, f"{target}: no space left on the device while writing it ({e.strerror}){free}; "
                                     "nothing was written under this name") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (a half-written PNG is never left behind) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)
