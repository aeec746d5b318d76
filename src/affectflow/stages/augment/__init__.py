"""Stage: GAN augmentation — train a class-conditional generator on the training split, generate,
score every synthetic sample, filter, and report (see docs/ARCHITECTURE.md, `augment`).

Modules: `data` (real training set, standardisation, embedding space), `generate` (generator
training and sampling), `quality` (per-sample scores and the filter), `report` (metrics, plots,
MLflow), `run` (the stage function), `ablation` (`affectflow ablate augmentation`).
"""
