"""The component decorator: project image, no pip install at start-up."""

from collections.abc import Callable
from typing import Any

from kfp import dsl

FALLBACK_IMAGE = "ghcr.io/affectflow/affectflow:{version}-{kind}"
"""Used until/unless affectflow.orchestration.images provides the project image names."""


def image(kind: str = "cpu") -> str:
    """The project image for `kind` ("cpu" or "gpu"): affectflow.orchestration.images.image_for when present."""
    try:
        from affectflow.orchestration.images import image_for
    except ImportError:
        from affectflow import __version__

        return FALLBACK_IMAGE.format(version=__version__, kind=kind)
    return image_for(kind)


def component(kind: str = "cpu") -> Callable[[Callable[..., Any]], Any]:
    """`dsl.component` on the project image. `install_kfp_package=False`: the image has kfp and
    affectflow already, and kfp.local's SubprocessRunner then runs the body in this very venv."""
    return dsl.component(base_image=image(kind), install_kfp_package=False)
