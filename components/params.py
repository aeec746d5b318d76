"""The `resolve-params` component: every tunable of params.yaml in, one config per stage out.

KFP types each component input from the function signature, and a run-form field can only reach a
task as a declared input, so this component's signature has one typed input per tunable. It is
generated from `affectflow.orchestration.pipeline.tunables` (the signature must follow params.yaml; a
hand-written one would go stale): the source is built as text, registered with `linecache` so
`inspect.getsource` (which KFP uses to ship the body) finds it, and decorated like any component.
"""

import hashlib
import linecache
from typing import Any, NamedTuple

from kfp.dsl import Artifact, Output

from affectflow.orchestration.pipeline import KFP_TYPES, STAGES, Tunable
from components.base import component

FUNCTION = "resolve_params"


def source(tunables: list[Tunable]) -> str:
    """Python source of the component function for these tunables."""
    args = "".join(f"    {t.name}: {KFP_TYPES[t.kind].__name__},\n" for t in tunables)
    outputs = ", ".join(f"('{s}', str)" for s in STAGES)
    values = "".join(f"        {t.key!r}: {t.name},\n" for t in tunables)
    text_keys = [t.key for t in tunables if t.kind == "yaml"]
    return (
        f"def {FUNCTION}(\n"
        f"    params: Output[Artifact],\n{args}"
        f") -> NamedTuple('Outputs', [{outputs}]):\n"
        '    """Validate the run\'s parameters once (errors name the key); write the full params.yaml;\n'
        '    return each stage the sections it reads."""\n'
        "    from affectflow.orchestration import kfp_io\n\n"
        f"    values = {{\n{values}    }}\n"
        f"    return kfp_io.resolve_params(values, {text_keys!r}, params.path)\n"
    )


def make(tunables: list[Tunable]) -> Any:
    """The component (a KFP PythonComponent) for these tunables."""
    text = source(tunables)
    filename = f"<affectflow-{FUNCTION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict[str, Any] = {"Output": Output, "Artifact": Artifact, "NamedTuple": NamedTuple}
    exec(compile(text, filename, "exec"), namespace)
    return component("cpu")(namespace[FUNCTION])
