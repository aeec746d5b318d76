"""The stage table (affectflow.stages.STAGES) and what follows from it: every row is a runnable
stage of the same shape, hands its task every params section its code reads, and dvc.yaml is
exactly what the table generates; the layers import one way only."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from affectflow.config import Params
from affectflow.contracts.workdir import ARTIFACTS
from affectflow.orchestration.dvc import closure, dvc_yaml
from affectflow.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "affectflow"
ATTR = re.compile(r"\b(?:params|p|sp|tp)\.([a-z0-9_]+)\b")
HASHED = re.compile(r"section_hash\(([^)]*)\)")


@pytest.mark.parametrize("name", list(STAGES))
def test_every_row_names_a_stage_with_the_one_shape(name: str) -> None:
    spec = STAGES[name]
    run = importlib.import_module(spec.module).run
    sig = inspect.signature(run).parameters
    assert list(sig)[:3] == ["params", "inputs", "out_dir"]
    for option in list(sig.values())[3:]:  # run options: keyword-only, each with a default
        assert option.kind is inspect.Parameter.KEYWORD_ONLY and option.default is not inspect.Parameter.empty
    assert set(spec.uses) <= set(STAGES) - {name}
    assert set(spec.inputs) | set(spec.optional) <= set(ARTIFACTS)
    assert set(spec.sections) <= set(Params.model_fields) - {"pipeline", "studies", "predict"}
    if spec.switch:
        section, key = spec.switch.split(".")
        assert Params.model_fields[section].annotation.model_fields[key].annotation is bool
    producers = {a.stage for a in ARTIFACTS.values()}
    assert spec.output in producers or name == "promote"  # the tail's last row: nothing reads its output


def _sections_read(files: frozenset[Path]) -> set[str]:
    found: set[str] = set()
    for f in files:
        text = f.read_text()
        found |= set(ATTR.findall(text))
        for args in HASHED.findall(text):
            found |= set(re.findall(r"[\"']([a-z0-9_]+)[\"']", args))
    return found & set(Params.model_fields)


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_is_handed_every_section_its_code_reads(name: str) -> None:
    """A section a stage reads but is not handed would silently keep its defaults in a pipeline task.
    The code searched is everything the stage module imports from affectflow, transitively."""
    spec = STAGES[name]
    files = closure(spec.module).union(*(closure(STAGES[u].module) for u in spec.uses))  # + the stages it runs
    assert SRC / spec.module.removeprefix("affectflow.").replace(".", "/") in {f.with_suffix("") for f in files}
    missing = _sections_read(files) - set(spec.sections)
    assert not missing, f"stage {name} reads params.{sorted(missing)} but its row does not list them"


def test_the_closure_follows_function_level_and_registry_imports() -> None:
    features = {f.relative_to(SRC).as_posix() for f in closure("affectflow.stages.features")}
    assert "audio.py" in features  # the dep dvc.yaml once lacked
    assert "features/logmel.py" in features  # imported inside a function
    ingest = {f.relative_to(SRC).as_posix() for f in closure("affectflow.stages.ingest")}
    assert {"corpora/ravdess.py", "corpora/csv_manifest.py"} <= ingest  # named in corpora.ADAPTERS
    assert "stages/train/stage.py" not in ingest  # the table's module strings are not followed


def test_committed_dvc_yaml_is_generated_from_the_table() -> None:
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(REPO), "dvc.yaml is stale: run `affectflow dvc`"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    for name, spec in STAGES.items():
        assert stages[name]["params"] == [*spec.sections, *spec.derived_params]
        assert stages[name]["cmd"] == f"affectflow step {name}"
    assert "${paths.workdir}/evaluate/metrics.json" in stages["register"]["deps"]
    assert "${paths.workdir}/rescore/plan.json" in stages["register"]["deps"]  # the tail: rescore -> register
    assert "${paths.workdir}/register/result.json" in stages["promote"]["deps"]  # -> promote
    assert "src/affectflow/stages/evaluate.py" in stages["rescore"]["deps"]  # the code it runs via the table
    assert "${paths.workdir}/train/model" in stages["evaluate"]["deps"]
    assert "src/affectflow/audio.py" in stages["features"]["deps"]


def test_import_layers_hold() -> None:
    """pipelines -> components -> affectflow, and the library's own layers (pyproject.toml's
    import-linter contracts): an import against them fails the build."""
    out = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    declared = (REPO / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert f"Contracts: {declared} kept, 0 broken." in out.stdout  # every declared contract ran and held


def test_every_stage_internal_is_off_limits_to_studies_and_benchmarks() -> None:
    """The forbidden contract lists every module of a stage package except the stage's face (its
    row's module, the package, a command's entry): a new internal module is covered, or this fails."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["type"] == "forbidden" and "affectflow.studies" in c["source_modules"])
    assert "benchmarks" in forbidden["source_modules"]
    faces = {spec.module for spec in STAGES.values()} | {"affectflow.stages.augment.latent"}  # augment-latent
    internal = set()
    for package in {spec.module.rsplit(".", 1)[0] for spec in STAGES.values()} - {"affectflow.stages"}:
        folder = SRC / package.removeprefix("affectflow.").replace(".", "/")
        internal |= {f"{package}.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"} - faces
    assert set(forbidden["forbidden_modules"]) == internal


def test_the_library_never_edits_sys_path() -> None:
    offenders = [str(f.relative_to(REPO)) for f in SRC.rglob("*.py") if re.search(r"sys\.path\.(insert|append)",
                                                                                  f.read_text())]
    assert offenders == []


def test_pipeline_compile_works_from_the_installed_wheel(tmp_path: Path) -> None:
    """The wheel ships pipelines/ (with the committed IR) and components/; its `affectflow pipeline
    compile` runs outside any checkout and writes the same IR as the committed one."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("affectflow-*.whl")
    import zipfile

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "pipelines" / "compiled" / "affectflow-train.yaml").is_file()
    code = ("import sys; from affectflow.cli import main; import pipelines; "
            "assert pipelines.__file__.startswith(sys.argv[1]), pipelines.__file__; "
            "sys.exit(main(['pipeline', '--params', sys.argv[2], 'compile']))")
    run = subprocess.run([sys.executable, "-c", code, str(site), str(REPO / "params.yaml")], cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "affectflow-train.yaml"  # outside a checkout: the current folder
    assert out.read_bytes() == (REPO / "pipelines" / "compiled" / "affectflow-train.yaml").read_bytes()
