"""Container images of the Kubeflow components and the cluster Jobs, named in this one place.

Each image is built from a Dockerfile in `containers/`; the Helm chart's `images` values and the
pipeline components refer to the same repository and tag (tests check both). Deployments push the
images to their own registry: set AFFECTFLOW_IMAGE_REGISTRY (e.g. `registry.example.com/ml`), or
give a full image in params.yaml (`pipeline.image_cpu` / `pipeline.image_gpu`), which wins.

    python -m affectflow.orchestration.images            # the `docker build` commands for every image
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from affectflow import __version__

if TYPE_CHECKING:
    from affectflow.config import Params

Kind = Literal["cpu", "gpu"]

DEFAULT_REGISTRY = "ghcr.io/affectflow"
REGISTRY_ENV = "AFFECTFLOW_IMAGE_REGISTRY"
REPOSITORY = "affectflow"
TORCH_VERSION = "2.13.0"
CUDA_VERSION = "13.0"
"""The CUDA runtime of the GPU image; torch 2.13.0's default Linux wheel is built for CUDA 13.0."""


@dataclass(frozen=True)
class ImageSpec:
    kind: Kind
    dockerfile: str
    """Path relative to the repository root."""
    tag: str

    def ref(self, registry: str | None = None) -> str:
        reg = (registry if registry is not None else os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY)).rstrip("/")
        return f"{reg}/{REPOSITORY}:{self.tag}" if reg else f"{REPOSITORY}:{self.tag}"


IMAGES: dict[Kind, ImageSpec] = {
    "cpu": ImageSpec("cpu", "containers/Dockerfile.cpu", f"{__version__}-cpu"),
    "gpu": ImageSpec("gpu", "containers/Dockerfile.cuda", f"{__version__}-cuda{CUDA_VERSION}"),
}


def image_for(kind: Kind, params: Params | None = None) -> str:
    """The image a component of this kind runs in (GPU tasks: "gpu"; everything else: "cpu")."""
    if kind not in IMAGES:
        raise ValueError(f"unknown image kind '{kind}'; known: {sorted(IMAGES)}")
    if params is not None:
        override = params.pipeline.image_gpu if kind == "gpu" else params.pipeline.image_cpu
        if override:
            return override
    return IMAGES[kind].ref()


def build_commands(registry: str | None = None) -> list[str]:
    """`docker build` lines (run from the repository root) that produce every image."""
    return [f"docker build -f {spec.dockerfile} -t {spec.ref(registry)} ." for spec in IMAGES.values()]


if __name__ == "__main__":
    sys.stdout.write("\n".join(build_commands()) + "\n")
