"""The compiled pipeline (IR YAML): its name, compiling a built pipeline deterministically, and
telling whether a committed IR is stale.

The DAG itself is built in `pipelines/train_pipeline.py` (outside the library: pipelines ->
components -> affectflow); these helpers take the built pipeline object.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

PIPELINE_NAME = "affectflow-train"


class PipelineError(RuntimeError):
    """The pipeline cannot be built, compiled, run or sent; the message says which part and why."""


def compile_to(pipeline: Any, target: str | Path) -> Path:
    """Write the IR of `pipeline` to `target` atomically; byte-identical for the same pipeline.

    KFP's header comment lists parameter defaults from a dict whose order can vary between
    processes; the run form has only scalar and text fields, so the text is stable, and the header
    is rewritten with sorted lines to make sure.
    """
    from kfp import compiler

    from affectflow.storage import atomic_path

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        compiler.Compiler().compile(pipeline, str(tmp))
        tmp.write_text(canonical(tmp.read_text()))
    return target


def canonical(text: str) -> str:
    """KFP's IR text with its header sorted and every YAML mapping written in sorted key order by
    our own dumper: the bytes then depend on the pipeline only, not on process state (`oyaml`,
    which openSMILE imports, patches PyYAML to keep insertion order for every later dump)."""
    import yaml

    from affectflow.config import SortedDumper

    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    head = _stable_header("".join(lines[:n]))
    docs = list(yaml.safe_load_all("".join(lines[n:])))
    return head + yaml.dump_all(docs, Dumper=SortedDumper, default_flow_style=False, sort_keys=True)


def _stable_header(text: str) -> str:
    """Sort the `#`-comment block KFP puts before the YAML (its input list), keep the rest."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    head = lines[:n]
    # The first lines name the pipeline and its description; the `Inputs:` list follows.
    if "# Inputs:\n" in head:
        i = head.index("# Inputs:\n") + 1
        j = i
        while j < len(head) and head[j].startswith("#    "):
            j += 1
        head = head[:i] + sorted(head[i:j]) + head[j:]
    return "".join(head + lines[n:])


def documents(path: str | Path) -> list[Any]:
    """The IR as data (for comparisons that ignore formatting)."""
    import yaml

    return list(yaml.safe_load_all(Path(path).read_text()))


def stale(pipeline: Any, compiled: str | Path) -> bool:
    """True when the IR at `compiled` differs from a fresh compile of `pipeline`."""
    path = Path(compiled)
    if not path.is_file():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_to(pipeline, Path(tmp) / "fresh.yaml")
        return fresh.read_bytes() != path.read_bytes()
