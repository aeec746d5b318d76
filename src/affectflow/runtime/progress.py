"""Progress for long loops: a bar on a terminal, a line every so often in a log.

`AFFECTFLOW_PROGRESS`: `1` bars (even without a terminal), `log` periodic lines, `0` nothing.
Unset: bars on a terminal, periodic lines otherwise (a Kubeflow or kfp.local task log shows
"features: 480/1440 clip (33 %), 40 s, ~80 s left" instead of nothing for minutes).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_EVERY_S = 15.0
"""Seconds between two progress lines in log mode (plus one at the end)."""


def mode() -> str:
    """`bar`, `log` or `off`."""
    flag = os.environ.get("AFFECTFLOW_PROGRESS")
    if flag is not None:
        if flag in ("0", "false", ""):
            return "off"
        return "log" if flag == "log" else "bar"
    return "bar" if sys.stderr.isatty() else "log"


def enabled() -> bool:
    return mode() != "off"


def progress(it: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    m = mode()
    if m == "log":
        return _log_lines(it, desc, total, unit)
    return tqdm(it, desc=desc, total=total, unit=unit, disable=m == "off", dynamic_ncols=True)


class _LogProgress:
    """Iterates like tqdm in log mode; `set_postfix` adds to the next line."""

    def __init__(self, it: Iterable[T], desc: str, total: int | None, unit: str):
        self.it, self.desc, self.unit = it, desc, unit
        self.total = total if total is not None else (len(it) if hasattr(it, "__len__") else None)  # type: ignore[arg-type]
        self.postfix = ""

    def set_postfix(self, **kw: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self, n: int, elapsed: float) -> str:
        done = f"{n}/{self.total} {self.unit}" if self.total else f"{n} {self.unit}"
        pct = f" ({100 * n / self.total:.0f} %)" if self.total else ""
        left = f", ~{elapsed / n * (self.total - n):.0f} s left" if self.total and 0 < n < self.total else ""
        extra = f" [{self.postfix}]" if self.postfix else ""
        return f"{self.desc}: {done}{pct}, {elapsed:.0f} s{left}{extra}"

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        n = 0
        for item in self.it:
            yield item
            n += 1
            now = time.monotonic()
            if now - last >= LOG_EVERY_S:
                print(self._line(n, now - start), file=sys.stderr, flush=True)
                last = now
        if n:
            print(self._line(n, time.monotonic() - start), file=sys.stderr, flush=True)


def _log_lines(it: Iterable[T], desc: str, total: int | None, unit: str) -> Iterable[T]:
    return _LogProgress(it, desc, total, unit)  # type: ignore[return-value]
