"""The `resolve-params` component: the run form in, one configuration per stage out.

KFP types each component input from the function signature and ships the function's source to
the container, so the signature (one typed input per run-form field, one output per stage) is
generated from `affectflow.orchestration.run_form.RUN_FORM` and the stage table: a hand-written
copy would go stale. The source is registered with `linecache` so `inspect.getsource` (which KFP
uses to ship the body) finds it.
"""

import hashlib
import linecache
from typing import Any, NamedTuple

from kfp.dsl import Artifact, Output

from affectflow.orchestration.run_form import DATA_VERSION, KFP_TYPES, OVERRIDES, RUN_FORM
from affectflow.stages import STAGES
from components.base import component

FUNCTION = "resolve_params"


def source() -> str:
    """Python source of the component function."""
    args = "".join(f"    {p.name}: {KFP_TYPES[p.kind()].__name__},\n" for p in RUN_FORM)
    outputs = ", ".join(f"('{s}', str)" for s in STAGES)
    values = "".join(f"        {p.name!r}: {p.name},\n" for p in RUN_FORM)
    return (
        f"def {FUNCTION}(\n"
        f"    base: str,\n    params: Output[Artifact],\n{args}    {OVERRIDES}: str,\n"
        f") -> NamedTuple('Outputs', [{outputs}]):\n"
        '    """Validate the run\'s parameters once (errors name the field or key): the compiled\n'
        "    params.yaml (`base`) + run-form fields + params_overrides; write the full params.yaml;\n"
        '    return each stage the sections it reads."""\n'
        "    from affectflow.orchestration import kfp_io\n\n"
        f"    values = {{\n{values}        {OVERRIDES!r}: {OVERRIDES},\n    }}\n"
        "    return kfp_io.resolve_params(base, values, params.path)\n"
    )


def make() -> Any:
    """The component (a KFP PythonComponent)."""
    text = source()
    filename = f"<affectflow-{FUNCTION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict[str, Any] = {"Output": Output, "Artifact": Artifact, "NamedTuple": NamedTuple}
    exec(compile(text, filename, "exec"), namespace)
    return component("cpu")(namespace[FUNCTION])


assert DATA_VERSION not in {p.name for p in RUN_FORM}  # handed to ingest, not to resolve-params
