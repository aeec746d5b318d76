"""The front-end a run can have here: a recognizer reading a packaged Whisper checkpoint
(`features.ssl.checkpoint: pkg:...`) whose weight packages are not installed falls back to the
ComParE recognizer, said in one line, instead of stopping the run (the demo on a box without
`make setup`'s `whisper-weights` extra). A checkpoint the user names (a folder, a hub id, s3://)
never falls back: its absence is an error naming it (`features.ssl`)."""

from __future__ import annotations

import logging

from affectflow.config import Params, with_overrides
from affectflow.features.packaged import missing
from affectflow.features.ssl import SSL
from affectflow.models import feature_kind

log = logging.getLogger(__name__)

FALLBACK_MODEL = "compare_mlp"
"""The recognizer a run without the packaged weights trains (the ComParE default it replaced)."""


def with_available_frontend(params: Params) -> Params:
    """`params`, or with `train.model: compare_mlp` when the model reads a packaged checkpoint that
    is not installed (a warning line says which package and how to install it)."""
    if feature_kind(params.train.model) != SSL:
        return params
    why = missing(params.features.ssl.checkpoint)
    if why is None:
        return params
    log.warning("train.model %s falls back to %s: %s", params.train.model, FALLBACK_MODEL, why)
    return with_overrides(params, {"train.model": FALLBACK_MODEL})
