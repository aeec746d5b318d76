"""The component decorator: the project image, no pip install at start-up."""

from collections.abc import Callable
from typing import Any

from kfp import dsl

from affectflow.orchestration.images import image_for


def component(kind: str = "cpu") -> Callable[[Callable[..., Any]], Any]:
    """`dsl.component` on the project image for `kind` ("cpu" or "gpu"). `install_kfp_package=False`:
    the image has kfp and affectflow already, and kfp.local's SubprocessRunner then runs the body in
    this very venv."""
    return dsl.component(base_image=image_for(kind), install_kfp_package=False)
