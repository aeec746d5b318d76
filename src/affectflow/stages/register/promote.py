"""Stage — promote (the register tail's last step, switched by `registry.auto_promote`): move
`champion` to the version register added when its gate passed, on the test set register compared on.

The gate runs again at promotion (the registry may have moved since register's decision); a
registration whose gate failed is left as it is. Writes `result.json` (`Promotion`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.workdir import RESULT_FILE
from affectflow.stages.register.guard import METRICS_PATH_TAG, guard_checks
from affectflow.stages.register.result import Promotion, Registration, read_registration
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_write_json
from affectflow.tracking.registry import Registry

DEFAULT_REASON = "at registration"


def promote(params: Params, registration: Registration, out_dir: str | Path, *, reason: str = DEFAULT_REASON,
            client: Any = None) -> Promotion:
    """Promote the registered version if its gate passed; the outcome, also as out_dir/result.json."""
    if registration.gate.passed:
        reg = Registry(params, client)
        gate = registration.gate
        checks = guard_checks(params, reg, reg.version_tags(registration.version).get(METRICS_PATH_TAG, ""),
                              recorded=registration.guard, recorded_champion=gate.champion_version)
        result = Promotion.of(reg.promote(registration.version, reason=reason, on=gate.test_manifest_hash,
                                          rescored=gate.rescored, extra_checks=checks))
    else:
        result = Promotion(model_name=registration.model_name, version=registration.version, gate=registration.gate,
                           promoted=False, previous_champion=registration.champion, champion=registration.champion,
                           aliases=registration.aliases)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESULT_FILE, result.to_json())
    return result


@dataclass
class PromoteResult:
    out_dir: Path
    promotion: Promotion

    @property
    def summary(self) -> dict[str, Any]:
        return self.promotion.to_json()


def run(params: Params, inputs: Inputs, out_dir: Path, *, reason: str = DEFAULT_REASON) -> PromoteResult:
    return PromoteResult(Path(out_dir), promote(params, read_registration(inputs["registration"]), out_dir,
                                                reason=reason))
