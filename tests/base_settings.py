"""The settings most tests are written for, whatever the product defaults are.

params.yaml (and the config classes, which mirror it) ship the multi-corpus default: four corpora,
ComParE functionals, per-corpus standardisation, a fixed epoch budget with no validation speakers.
Most tests build one small generated corpus and test machinery (early stopping on validation
speakers, log-mel crops, the CNN), so they start from these settings and override what they test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectflow.config import Params, load_params

SINGLE_CORPUS: dict[str, Any] = {
    "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
    "ingest.classes": ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"],
    "features.kinds": ["logmel", "egemaps"],
    "splits.val_fraction": 0.2,
    "train.model": "cnn_bigru",
    "train.epochs": 50,
    "train.batch_size": 32,
    "train.lr": 0.002,
    "train.schedule": "onecycle",
    "train.checkpoint": "best_val",
    "train.normalize": "global",
    "train.class_balance": "weighted_loss",
    "train.corpus_balance": False,
    "train.mlp.dropout": 0.3,
    "train.mlp.input_dropout": 0.0,
    # Generated clips are not speech (Silero calls about 1 in 10 of them "no speech",
    # benchmarks/speech_check.py): the tests of machinery turn the speech check off; the speech
    # check's own tests (test_speech.py, test_bad_input.py) turn it on.
    "audio.min_speech_s": 0.0,
    # Tests count what each run computes: the deployment's shared feature store is off (its own tests,
    # tests/unit/test_feature_store.py, turn it on).
    "features.store": "",
    # The tests' encoders are tiny (2 layers, 3 hidden states): keep every state (the shipped default
    # keeps Whisper-base's 0-3).
    "features.ssl.layers": [],
}
"""One RAVDESS-like corpus, log-mel CNN-BiGRU, early stopping on validation speakers."""


def base_params(overrides: dict[str, Any] | None = None) -> Params:
    """`load_params(None, ...)` from the single-corpus test settings, then `overrides`."""
    return load_params(None, {**SINGLE_CORPUS, **(overrides or {})})



def synth_params_at(synth_root: Path, base: Path, **overrides: Any) -> Params:
    """The settings for the generated 4-class corpus at `synth_root` (the `synth_root` fixture), with
    the workdir and MLflow store under `base` and one worker each: what the fixture and the
    session-wide recognizer corpus share."""
    return base_params({
        "paths.workdir": str(base / "work"),
        "paths.data_root": str(synth_root.parent),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
        "ingest.classes": ["neutral", "happy", "sad", "angry"],
        "ingest.workers": 1,
        "features.workers": 1,
        "tracking.uri": f"sqlite:///{base / 'mlflow.db'}",
        "tracking.artifact_location": str(base / "mlartifacts"),
        **overrides,
    })
