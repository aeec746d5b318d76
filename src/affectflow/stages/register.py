"""Stage — register: the trained model becomes a registry version (`challenger`), gated against
`champion`; the registry itself (versions, aliases, gate, history) is `affectflow.tracking.registry`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.workdir import METRICS_FILE
from affectflow.stages.spec import Inputs
from affectflow.tracking.registry import register


@dataclass
class RegisterResult:
    out_dir: Path
    summary: dict[str, Any]


def run(params: Params, inputs: Inputs, out_dir: Path) -> RegisterResult:
    evaluation = Path(inputs["evaluation"])
    metrics = evaluation / METRICS_FILE if evaluation.is_dir() else evaluation
    return RegisterResult(Path(out_dir), register(params, inputs["model"], metrics, out_dir))
