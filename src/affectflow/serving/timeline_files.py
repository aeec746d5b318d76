"""Timelines of files (`affectflow predict --timeline`): inputs as `affectflow predict` takes them,
the model's speech check, one `serving.timeline.Timeline` per input.

Apart from `serving/timeline.py` (the windows, smoothing and outputs) because this half reads
params (`predict`, `audio`) and the predict module: the pyfunc and KServe, which score timelines
from a request, import only the other half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from affectflow import audio
from affectflow.config import Params
from affectflow.serving.timeline import Timeline, score_timeline
from affectflow.speech import SpeechCheck

if TYPE_CHECKING:
    from affectflow.serving.predict import Backend


@dataclass
class TimelineResult:
    model_uri: str
    timelines: list[Timeline]
    failed: dict[str, str]
    """path -> reason, for inputs that could not be scored (the others still are)."""


def timeline_paths(params: Params, paths: Sequence[str | Path], model_uri: str | None = None,
                   backend: Backend | None = None, report: Callable[[str], None] | None = None) -> TimelineResult:
    """A timeline per input (files, folders, manifests, s3:// as `affectflow predict` takes them),
    with `predict.timeline` settings; a failing input is reported and skipped."""
    import sys

    from affectflow.serving.predict import collect_inputs, fetched, load_backend
    from affectflow.storage.s3 import store_for

    store = store_for(params)
    files = collect_inputs(paths, store)
    backend = backend or load_backend(params, model_uri)
    say = report or (lambda msg: print(msg, file=sys.stderr))
    speech = model_speech_check(backend, params)
    out, failed = [], {}
    with fetched(files, store) as (local, missing):
        for i, name in enumerate(files):
            try:
                if i in missing:
                    raise audio.AudioError(name, missing[i])
                t = score_timeline(local[i], backend.predict, backend.classes, backend.sample_rate,
                                   params.predict.timeline, params.predict.batch_size, speech=speech,
                                   dimensions=getattr(backend, "dimensions", ()))
            except (audio.AudioError, OSError, ValueError) as e:
                failed[name] = getattr(e, "reason", str(e))
                say(f"error: {name}: {failed[name]}")
                continue
            t.path = name
            out.append(t)
    return TimelineResult(backend.uri, out, failed)


def model_speech_check(backend: Backend, params: Params) -> SpeechCheck:
    """The model's own speech check (its model.json `audio`, what the servers apply); `params.audio`'s
    for a model that carries none (another pyfunc with the affectflow contract)."""
    meta = getattr(getattr(backend, "rec", None), "meta", None)
    return SpeechCheck.from_audio_config(meta.audio if meta is not None else params.audio)
