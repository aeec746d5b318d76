"""Stage: domain-adversarial (DANN) pretraining of the recognizer's encoder.

Modules: `stage` (the stage function), `data` (source / target / held-out rows, domain labels, the
target-test guard, normalisation), `loop` (the training loop), `probe` (domain probe, proxy
A-distance, 2-D projection), `report` (plots, report.md, MLflow). The cross-corpus study is
`affectflow.studies.dann`.
"""
