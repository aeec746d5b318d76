"""The compiled pipeline (IR YAML): its name, compiling a built pipeline deterministically, and
telling whether a committed IR is stale.

The DAG itself is built in `pipelines/train_pipeline.py` (outside the library: pipelines ->
components -> affectflow); these helpers take the built pipeline object.
"""

from __future__ import annotations

import ast
import json
import re
import tempfile
from pathlib import Path
from typing import Any

PIPELINE_NAME = "affectflow-train"


class PipelineError(RuntimeError):
    """The pipeline cannot be built, compiled, run or sent; the message says which part and why."""


def compile_to(pipeline: Any, target: str | Path) -> Path:
    """Write the IR of `pipeline` to `target` atomically; byte-identical for the same pipeline.

    KFP's header comment lists parameter defaults from a dict whose order can vary between
    processes: the header is rewritten with sorted lines, list and mapping defaults as sorted JSON.
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
        head = head[:i] + sorted(_sorted_default(line) for line in head[i:j]) + head[j:]
    return "".join(head + lines[n:])


_DEFAULT_LINE = re.compile(r"^(#    \S+: \w+ \[Default: )(.*)(\]\n?)$")


def _sorted_default(line: str) -> str:
    """An `Inputs:` line whose default is a list or mapping (printed from a dict whose key order varies
    between processes), rewritten as JSON with sorted keys; other lines as they are."""
    m = _DEFAULT_LINE.match(line)
    if not m:
        return line
    try:
        value = ast.literal_eval(m.group(2))
    except (ValueError, SyntaxError):
        return line
    if not isinstance(value, list | dict):
        return line
    return m.group(1) + json.dumps(value, sort_keys=True) + m.group(3)


def documents(path: str | Path) -> list[Any]:
    """The IR as data (for comparisons that ignore formatting)."""
    import yaml

    return list(yaml.safe_load_all(Path(path).read_text()))


def with_defaults(package: str | Path, values: dict[str, Any], target: str | Path) -> Path:
    """A copy of the IR at `package` whose run-form defaults are `values` (field name -> value), so the
    Kubeflow UI's run form and runs that do not set a field get them (a cluster's data root instead of
    the compiled `../shared/data`); a name the pipeline has no field for is an error naming it."""
    import yaml

    from affectflow.config import SortedDumper
    from affectflow.storage import atomic_path

    docs = documents(package)
    fields = docs[0]["root"]["inputDefinitions"]["parameters"]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"{package}: the pipeline has no run-form field {unknown}")
    for name, value in values.items():
        fields[name]["defaultValue"] = value
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text(yaml.dump_all(docs, Dumper=SortedDumper, default_flow_style=False, sort_keys=True))
    return target


def stale(pipeline: Any, compiled: str | Path) -> bool:
    """True when the IR at `compiled` differs from a fresh compile of `pipeline`."""
    path = Path(compiled)
    if not path.is_file():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_to(pipeline, Path(tmp) / "fresh.yaml")
        return fresh.read_bytes() != path.read_bytes()
