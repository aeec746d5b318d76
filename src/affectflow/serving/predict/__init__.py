"""Prediction on new audio: files, folders or manifests in, class probabilities per file out.

The model is any MLflow model URI (default `models:/<registry.model_name>@champion` on
`tracking.uri`) or a local model folder. For the affectflow pyfunc the recognizer inside it is used
directly (`affectflow.serving.recognizer`: the same feature extraction and normalisation as training), so
clips can be batched across files and put on the GPU; any other pyfunc with the same contract
(`audio` + `sample_rate` columns in, one probability column per class out) is called through
`predict`.

Why windows: a clip longer than `predict.max_window_s` is never decoded whole. Its windows
(`max_window_s` long, `hop_s` apart, the last one ending at the clip's end) are read from the file
one at a time, scored like short clips, and the clip's probabilities are the mean over its windows;
memory is bounded by `batch_size` windows whatever the file length.

Why "no speech": a window with less than `audio.min_speech_s` of speech (`affectflow.speech`,
Silero VAD) is not scored, and a file none of whose windows has speech gets status `no_speech`,
no label and no probabilities (not an error: the exit code is 0); silence, noise or music would
otherwise get a confident emotion.

Why per-file errors: one unreadable file in a folder of thousands should cost that file, not the
run. Every failure (missing, undecodable, empty, truncated, NaN samples, shorter than
`audio.min_duration_s`, a clip the model cannot take) is recorded in the output with its reason and
reported on stderr; the others are still predicted. The audio rules and their texts are ingest's
(`affectflow.audio`), so a clip ingest would quarantine is not silently predicted.

Why s3:// inputs are downloaded first: soundfile reads local files only, and seeking through a long
file window by window over HTTP would cost a request per window. An `s3://` object or prefix (and an
`s3://` row of a manifest) is fetched into a temporary folder for the run, in parallel
(`s3.max_concurrency`), and removed afterwards; the output keeps the URI as the row's path. A missing
object is that input's error, as a missing local file is; rejected credentials or an unreachable
endpoint stop the run, since every S3 input would fail the same way.

The modules: `inputs` (PATH arguments -> files), `windows` (a file -> windows), `backends` (what
scores), `engine` (the loop and the output), `client` (a scoring server's HTTP client).
"""

from __future__ import annotations

from affectflow.serving.predict.backends import (
    CHAMPION_ALIAS,
    Backend,
    PyfuncBackend,
    RecognizerBackend,
    default_model_uri,
    deploy_stats_location,
    load_backend,
)
from affectflow.serving.predict.client import invocations_payload, post_invocations
from affectflow.serving.predict.engine import (
    FORMATS,
    PROB_DECIMALS,
    FilePrediction,
    PredictResult,
    fail,
    predict_paths,
    render,
    write_result,
)
from affectflow.serving.predict.inputs import (
    MANIFEST_SUFFIXES,
    PredictInputError,
    collect_inputs,
    fetched,
    manifest_paths,
    s3_inputs,
)
from affectflow.serving.predict.windows import Decoded, WindowReader, window_spans

__all__ = ["CHAMPION_ALIAS", "FORMATS", "MANIFEST_SUFFIXES", "PROB_DECIMALS", "Backend", "Decoded", "FilePrediction", "PredictInputError", "PredictResult", "PyfuncBackend", "RecognizerBackend", "WindowReader", "collect_inputs", "default_model_uri", "deploy_stats_location", "fail", "fetched", "invocations_payload", "load_backend", "manifest_paths", "post_invocations", "predict_paths", "render", "s3_inputs", "window_spans", "write_result"]
