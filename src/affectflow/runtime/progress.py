"""Progress bars that stay quiet in CI logs unless asked (AFFECTFLOW_PROGRESS=1 forces them on)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    flag = os.environ.get("AFFECTFLOW_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "")
    return sys.stderr.isatty()


def progress(it: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    return tqdm(it, desc=desc, total=total, unit=unit, disable=not enabled(), dynamic_ncols=True)
