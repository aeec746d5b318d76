"""Importing large libraries (MLflow and its SQLAlchemy store: about a million objects) without
the cyclic garbage collector's repeated passes over them.

Measured on `affectflow registry list` (benchmarks/RESULTS.md, "CLI start-up"): the collector's
passes during MLflow's import cost about 0.4 s of CPU and its last pass at interpreter exit about
0.6 s, a third of the command. Neither pass frees anything: module objects live until exit.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off inside the block (imports only: they create no garbage cycles
    worth collecting), back to its previous state after it, also on errors."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_before_exit() -> None:
    """Move every object alive now to the collector's permanent generation: the process is about
    to exit, and the collector's last pass over every imported module would free nothing."""
    gc.freeze()
