"""The recognizer as an MLflow pyfunc: audio in, class probabilities out.

Feature extraction lives inside the model (the model folder's feature configuration and
normalisation, through `affectflow.serving.recognizer`), so a registered model is usable on its own:

    model = mlflow.pyfunc.load_model("models:/affectflow-ser@champion")
    model.predict(pd.DataFrame({"path": ["clip.wav"]}))                       # files
    model.predict(pd.DataFrame({"audio": [wave.tolist()], "sample_rate": [16000]}))  # waveforms
    model.predict(pd.DataFrame({"audio_b64": [base64.b64encode(Path("clip.flac").read_bytes()).decode()]}))

Input: a DataFrame with, per row, exactly one of
  `path`       a file on the machine running the model (any format soundfile reads);
  `audio`      mono float samples, at `sample_rate` (optional column; default: the model's rate);
  `audio_b64`  base64 of an encoded audio file (wav, flac, ogg, mp3: what soundfile reads), decoded
               in memory. Why: a remote client (`mlflow models serve`, KServe, curl) has files, not
               server paths, and the encoded file is several times smaller than its samples as JSON
               floats. The file's own header gives the rate; `sample_rate`, if set on such a row,
               must agree with it.
Files (`path` or `audio_b64`) are mixed to mono and resampled to the model's rate as in training
(`affectflow.audio`). A plain list of paths or arrays works too. Output: one probability column per
class, in model order, plus `label` (argmax). The affectflow package travels with the model
(`code_paths`).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.pyfunc import PythonModel

from affectflow import audio

MODEL_ARTIFACT = "model_dir"
ENCODER_ARTIFACT = "ssl_encoder"
"""The pretrained speech encoder of an `ssl` model, carried inside the logged model."""
EXAMPLE_SECONDS = 0.5
"""Length of the generated waveform logged as the input example."""
SOURCE_COLUMNS = ("path", "audio", "audio_b64")
"""The input columns that carry a row's audio; a row sets exactly one of them."""


class AffectflowPyfunc(PythonModel):
    """`mlflow.pyfunc.PythonModel` around a model folder."""

    def load_context(self, context: Any) -> None:
        from affectflow.serving.recognizer import Featurizer, load_model_dir

        self.rec = load_model_dir(context.artifacts[MODEL_ARTIFACT])
        encoder = context.artifacts.get(ENCODER_ARTIFACT)
        if encoder:  # the checkpoint travels with the model: no hub, no bucket needed to serve it
            self.rec.meta.feature_config = {**self.rec.meta.feature_config, "checkpoint": encoder}
        self.featurizer = Featurizer(self.rec.meta)

    # No annotations on purpose: MLflow turns predict() type hints into an input schema of its own.
    def predict(self, context, model_input, params=None):
        from affectflow.serving.recognizer import predict_audio

        groups = parse_input(model_input)
        classes = self.rec.classes
        probs = np.zeros((sum(len(ix) for ix, _, _ in groups), len(classes)), np.float32)
        for idx, items, rate in groups:
            probs[idx] = predict_audio(self.rec, items, input_rate=rate, featurizer=self.featurizer)
        out = pd.DataFrame(probs.astype(np.float64), columns=classes)
        out["label"] = [classes[i] for i in probs.argmax(axis=1)] if len(out) else []
        return out


def parse_input(model_input: Any) -> list[tuple[list[int], list[Any], int | None]]:
    """Group rows as (row indices, paths or waveforms, input sample rate); `audio_b64` rows are
    decoded here and grouped by their file's rate."""
    if isinstance(model_input, (str, Path, np.ndarray)):
        model_input = [model_input]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, list):
        if all(isinstance(x, (str, Path)) for x in model_input):
            model_input = pd.DataFrame({"path": [str(x) for x in model_input]})
        else:
            model_input = pd.DataFrame({"audio": list(model_input)})
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError("pyfunc input: expected a DataFrame with a 'path', 'audio' or 'audio_b64' column, "
                         f"got {type(model_input).__name__}")
    df = model_input.reset_index(drop=True)
    present = [c for c in SOURCE_COLUMNS if c in df.columns]
    if not present:
        raise ValueError(f"pyfunc input: needs a 'path', an 'audio' or an 'audio_b64' column (has {list(df.columns)})")
    groups: dict[int | None, tuple[list[int], list[Any]]] = {}
    for i, row in df.iterrows():
        row_set = [c for c in present if is_set(row[c])]
        if len(row_set) != 1:
            both = "both" if len(row_set) == 2 else "all"
            what = f"{' and '.join(repr(c) for c in row_set)} are {both} set" if row_set else "no audio is set"
            raise ValueError(f"pyfunc input row {i}: {what}; give exactly one of 'path', 'audio', 'audio_b64' per row")
        column = row_set[0]
        rate = row.get("sample_rate") if "sample_rate" in df.columns else None
        rate = None if rate is None or pd.isna(rate) else int(rate)
        if column == "path":
            key, item = None, str(row["path"])
        elif column == "audio":
            key, item = rate, np.asarray(row["audio"], dtype=np.float32)
        else:
            item, key = decode_b64(row["audio_b64"], int(i))
            if rate is not None and rate != key:
                raise ValueError(f"pyfunc input row {i}: column 'sample_rate' is {rate} but the 'audio_b64' "
                                 f"file's header says {key} Hz; leave 'sample_rate' empty for encoded files")
        ix, items = groups.setdefault(key, ([], []))
        ix.append(int(i))
        items.append(item)
    return [(ix, items, rate) for rate, (ix, items) in groups.items()]


def is_set(value: Any) -> bool:
    """Whether a cell carries a value: not None/NaN (missing in some JSON records), not ''."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return True
    if isinstance(value, str):
        return bool(value)
    return not pd.isna(value)


def decode_b64(value: Any, row: int) -> tuple[np.ndarray, int]:
    """An `audio_b64` cell as (mono float32 samples, the file's sample rate), decoded in memory the
    way `affectflow.audio.load` decodes a file, so resampling to the model's rate is the same too."""
    where = f"pyfunc input row {row}, column 'audio_b64'"
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:  # whitespace is dropped: `base64` without -w0 wraps its output at 76 characters
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as e:  # non-alphabet characters, bad padding, non-ASCII text
        raise ValueError(f"{where}: not valid base64 ({e})") from None
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError variants
        raise ValueError(f"{where}: {len(data)} decoded bytes are not audio soundfile can read ({e})") from None
    x = audio.to_mono(np.asarray(x, dtype=np.float32))
    if x.size == 0:
        raise ValueError(f"{where}: empty audio (no samples)")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: audio contains NaN or infinite samples")
    return x, int(sr)


def signature(classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(DataType.string, "path", required=False),
        ColSpec(Array(DataType.double), "audio", required=False),
        ColSpec(DataType.long, "sample_rate", required=False),
        ColSpec(DataType.string, "audio_b64", required=False),
    ])
    outputs = Schema([*(ColSpec(DataType.double, c) for c in classes), ColSpec(DataType.string, "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(sample_rate: int) -> pd.DataFrame:
    """A short generated vowel-like waveform (no file needed to try the model)."""
    from affectflow.corpora.demo import utterance

    wave = utterance("neutral", speaker=1, seed=0, sr=sample_rate, duration=EXAMPLE_SECONDS)
    return pd.DataFrame({"audio": [wave.astype(np.float32).tolist()], "sample_rate": [sample_rate]})


def requirements(feature: str) -> list[str]:
    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "pydantic>=2.5", "pyyaml",
            "soundfile", "soxr", f"mlflow=={__import__('mlflow').__version__}"]
    if feature == "ssl":
        return [*reqs, f"transformers=={__import__('transformers').__version__}"]
    return [*reqs, "opensmile"] if feature in ("egemaps", "egemaps_lld", "compare") else reqs


def log_pyfunc(model_dir: str | Path, name: str = "model", registered_model_name: str | None = None) -> Any:
    """Log the model folder as a pyfunc into the active run; returns MLflow's ModelInfo."""
    import mlflow

    import affectflow
    from affectflow.contracts.model_folder import read_model_meta

    meta = read_model_meta(model_dir)
    artifacts = {MODEL_ARTIFACT: str(Path(model_dir).resolve())}
    if meta.feature == "ssl":
        from affectflow.config import SslConfig
        from affectflow.features.ssl import local_checkpoint

        where = local_checkpoint(SslConfig.model_validate(
            {k: v for k, v in meta.feature_config.items() if k in SslConfig.model_fields}))
        if isinstance(where, Path):
            artifacts[ENCODER_ARTIFACT] = str(where.resolve())
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=AffectflowPyfunc(),
        artifacts=artifacts,
        code_paths=[str(Path(affectflow.__file__).parent)],
        signature=signature(list(meta.classes)),
        input_example=input_example(meta.sample_rate),
        pip_requirements=requirements(meta.feature),
        registered_model_name=registered_model_name,
    )
