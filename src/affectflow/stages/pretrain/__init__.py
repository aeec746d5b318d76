"""Stage: domain-adversarial (DANN) pretraining of the recognizer's encoder (docs/ARCHITECTURE.md, `pretrain`).

Modules: `data` (source / target / held-out rows, domain labels, the target-test guard,
normalisation), `loop` (the training loop), `probe` (domain probe, proxy A-distance, 2-D
projection), `report` (plots, report.md, MLflow), `run` (the stage function), `ablation`
(`affectflow ablate dann`, the cross-corpus table).
"""

from affectflow.stages.pretrain.stage import PretrainResult, pretrain

__all__ = ["PretrainResult", "pretrain"]
