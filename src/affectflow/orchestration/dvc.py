"""dvc.yaml, generated from the stage table so that it cannot drift from the code.

Each stage becomes `affectflow step <name>` with: its input artifacts' DVC outputs as deps, every
source file of the library it imports (found by following its imports, function-level ones
included, through `affectflow`), the params sections it reads, and its outputs / metrics / plots.
`affectflow dvc` writes the file; `affectflow dvc --check` (and a unit test) fails when the
committed one differs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import yaml

from affectflow.contracts.workdir import ARTIFACTS
from affectflow.stages import STAGES, StageSpec

WORKDIR = "${paths.workdir}"
HEADER = """\
# GENERATED from the stage table (affectflow.stages.STAGES) by `affectflow dvc`; do not edit:
# change the table or the code and re-run `affectflow dvc` (a unit test checks this file).
# The training DAG as DVC stages, on the workdir layout of docs/ARCHITECTURE.md: the same stages as
# the Kubeflow DAG (pipelines/train_pipeline.py). Each stage lists the params.yaml sections it
# reads and every library file it imports, so a change to either re-runs it and nothing else.
#
#   dvc repro                           # everything that is out of date
#   dvc exp run -S train.epochs=5       # an experiment with one parameter changed
#   dvc metrics show; dvc plots show
#
# Commands run `affectflow`: activate the environment first (`. .venv/bin/activate`).
# augment and pretrain always run; when switched off they leave a SKIPPED placeholder, as the
# Kubeflow DAG's else-branch does.
"""


PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""src/affectflow: module names map to files below it without importing anything."""


def _module_file(name: str) -> Path | None:
    """The file of affectflow module `name`, or None when `name` is not a module (an imported name)."""
    rel = Path(*name.split(".")[1:])
    for cand in (PACKAGE_DIR / rel.with_suffix(".py") if rel.parts else None, PACKAGE_DIR / rel / "__init__.py"):
        if cand is not None and cand.is_file():
            return cand
    return None


DYNAMIC_IMPORTERS = frozenset({"affectflow.corpora"})
"""Registration points that import modules named by strings (`corpora.ADAPTERS`): their module-name
literals count as imports. (The stage table's are not followed: a stage does not run the others.)"""


def _imports(name: str, path: Path) -> set[str]:
    """Modules of affectflow that module `name` imports (anywhere in its body)."""
    tree = ast.parse(path.read_text(), str(path))
    dynamic = name in DYNAMIC_IMPORTERS
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
        elif dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    out = set()
    for mod in found:
        if mod == "affectflow" or mod.startswith("affectflow."):
            parts = mod.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # packages run their __init__
    return out


@cache
def closure(module: str) -> frozenset[Path]:
    """Source files of `module` and of every affectflow module it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path) - set(seen))
    return frozenset(seen.values())


def code_deps(spec: StageSpec, root: Path) -> list[str]:
    """The stage's library files (and those of the stages it `uses`), relative to the project root."""
    files = closure(spec.module).union(*(closure(STAGES[u].module) for u in spec.uses))
    return sorted(p.resolve().relative_to(root.resolve()).as_posix() for p in files)


def _out_paths(spec: StageSpec) -> list[str]:
    base = f"{WORKDIR}/{spec.output}"
    return [f"{base}/{o}" if o else base for o in (*spec.outs, *spec.metrics)]


def input_deps(spec: StageSpec) -> list[str]:
    """DVC outputs of the stages that produce this stage's input artifacts."""
    deps: list[str] = []
    for art in (*spec.inputs, *spec.optional):
        a = ARTIFACTS[art]
        producer = next(s for s in STAGES.values() if s.output == a.stage)
        outs = _out_paths(producer)
        if a.inner and f"{WORKDIR}/{a.stage}" not in outs:
            outs = [o for o in outs if o.startswith(f"{WORKDIR}/{a.stage}/{a.inner}")]
        deps += [o for o in outs if o not in deps]
    return deps


def stage_entry(spec: StageSpec, root: Path) -> dict[str, object]:
    base = f"{WORKDIR}/{spec.output}"
    entry: dict[str, object] = {
        "cmd": f"affectflow step {spec.name}",
        "deps": [*spec.extra_deps, *input_deps(spec), *code_deps(spec, root)],
        "params": [*spec.sections, *spec.derived_params],
    }
    if spec.outs:
        entry["outs"] = [f"{base}/{o}" if o else base for o in spec.outs]
    if spec.metrics:
        entry["metrics"] = [{f"{base}/{m}": {"cache": False}} for m in spec.metrics]
    if spec.plots:
        entry["plots"] = [{f"{base}/{p}": {"cache": False}} for p in spec.plots]
    return entry


def dvc_yaml(root: Path) -> str:
    """The text of dvc.yaml for the project at `root` (where src/affectflow lives)."""
    body = {"stages": {name: stage_entry(spec, root) for name, spec in STAGES.items()}}
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=110)


def project_root() -> Path:
    """The checkout this library runs from (dvc.yaml describes a checkout, not an installed wheel)."""
    here = Path(__file__).resolve()
    for cand in here.parents:
        if (cand / "pyproject.toml").is_file() and (cand / "src" / "affectflow").is_dir():
            return cand
    raise FileNotFoundError(f"{here}: not inside an affectflow checkout (no pyproject.toml with src/affectflow "
                            "above it); dvc.yaml describes a checkout")
