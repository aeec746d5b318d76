"""Temperature of a trained recognizer, fitted on the run's validation speakers.

Why validation speakers: they are held out from the gradient steps (they only pick the epoch), are
part of the *training* data (the test split and held-out corpora stay untouched for evaluate's
before/after figures), and are other people than the training speakers, so the fitted temperature
reflects how sure the model should be on a new voice. A run without validation rows keeps an
uncalibrated softmax (`ModelMeta.calibration` None), said so in the model card.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.model_folder import Calibration
from affectflow.models.calibration import expected_calibration_error, fit_temperature, scaled_probabilities
from affectflow.models.data import NormStats, normalize
from affectflow.serving.recognizer import predict_logits
from affectflow.stages.train.plan import WorkerConfig


def fit_calibration(cfg: WorkerConfig, model: nn.Module, batch_size: int = 64) -> Calibration | None:
    """Temperature scaling on the validation rows of `cfg` (normalised as in training)."""
    if not cfg.val_ids:
        return None
    stats = NormStats.from_dict(cfg.stats)
    per = {c: NormStats.from_dict(s) for c, s in cfg.stats_per_corpus.items()}
    arrays = FeatureSet(cfg.features_dir).load(cfg.feature, cfg.val_ids)
    x = [normalize(a, per.get(c, stats)) for a, c in zip(arrays, cfg.val_corpora, strict=True)]
    device = next(model.parameters()).device
    logits = predict_logits(model, x, device, batch_size).numpy()
    y = np.asarray(cfg.val_y, np.int64)
    t = fit_temperature(logits, y)
    corpora = ", ".join(sorted(set(cfg.val_corpora)))
    return Calibration(temperature=round(t, 6), fitted_on=f"validation speakers of {corpora}", n=len(y),
                       ece_before=round(expected_calibration_error(scaled_probabilities(logits), y), 4),
                       ece_after=round(expected_calibration_error(scaled_probabilities(logits, t), y), 4))



