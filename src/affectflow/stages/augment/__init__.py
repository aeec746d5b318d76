"""Stage: GAN augmentation — train a class-conditional generator on the training split, generate,
score every synthetic sample, filter, and report.

Modules: `stage` (the stage function), `data` (real training set, standardisation, embedding
space), `generate` (generator training and sampling), `quality` (per-sample scores and the
filter), `report` (metrics, plots, MLflow). The study is `affectflow.studies.augmentation`.
"""
