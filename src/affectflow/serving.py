"""The recognizer as an MLflow pyfunc: audio in, class probabilities out.

Feature extraction lives inside the model (the model folder's feature configuration and
normalisation, through `affectflow.inference`), so a registered model is usable on its own:

    model = mlflow.pyfunc.load_model("models:/affectflow-ser@champion")
    model.predict(pd.DataFrame({"path": ["clip.wav"]}))                       # files
    model.predict(pd.DataFrame({"audio": [wave.tolist()], "sample_rate": [16000]}))  # waveforms

Input: a DataFrame with a `path` column (any format soundfile reads) or an `audio` column (mono
float samples) with an optional `sample_rate` (default: the model's); a plain list of paths or
arrays works too. Output: one probability column per class, in model order, plus `label` (argmax).
The affectflow package travels with the model (`code_paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model_dir"
EXAMPLE_SECONDS = 0.5
"""Length of the generated waveform logged as the input example."""


class AffectflowPyfunc(PythonModel):
    """`mlflow.pyfunc.PythonModel` around a model folder."""

    def load_context(self, context: Any) -> None:
        from affectflow.inference import Featurizer, load_model_dir

        self.rec = load_model_dir(context.artifacts[MODEL_ARTIFACT])
        self.featurizer = Featurizer(self.rec.meta)

    # No annotations on purpose: MLflow turns predict() type hints into an input schema of its own.
    def predict(self, context, model_input, params=None):
        from affectflow.inference import predict_audio

        groups = parse_input(model_input)
        classes = self.rec.classes
        probs = np.zeros((sum(len(ix) for ix, _, _ in groups), len(classes)), np.float32)
        for idx, items, rate in groups:
            probs[idx] = predict_audio(self.rec, items, input_rate=rate, featurizer=self.featurizer)
        out = pd.DataFrame(probs.astype(np.float64), columns=classes)
        out["label"] = [classes[i] for i in probs.argmax(axis=1)] if len(out) else []
        return out


def parse_input(model_input: Any) -> list[tuple[list[int], list[Any], int | None]]:
    """Group rows as (row indices, paths or waveforms, input sample rate)."""
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
        raise ValueError(f"pyfunc input: expected a DataFrame with 'path' or 'audio', got {type(model_input).__name__}")
    df = model_input.reset_index(drop=True)
    if "path" not in df.columns and "audio" not in df.columns:
        raise ValueError(f"pyfunc input: needs a 'path' or an 'audio' column (has {list(df.columns)})")
    groups: dict[int | None, tuple[list[int], list[Any]]] = {}
    for i, row in df.iterrows():
        path = row.get("path") if "path" in df.columns else None
        wave = row.get("audio") if "audio" in df.columns else None
        if isinstance(path, str) and path:
            key, item = None, path
        elif wave is not None and not (isinstance(wave, float) and np.isnan(wave)):
            rate = row.get("sample_rate") if "sample_rate" in df.columns else None
            key = None if rate is None or pd.isna(rate) else int(rate)
            item = np.asarray(wave, dtype=np.float32)
        else:
            raise ValueError(f"pyfunc input row {i}: neither 'path' nor 'audio' is set")
        ix, items = groups.setdefault(key, ([], []))
        ix.append(int(i))
        items.append(item)
    return [(ix, items, rate) for rate, (ix, items) in groups.items()]


def signature(classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(DataType.string, "path", required=False),
        ColSpec(Array(DataType.double), "audio", required=False),
        ColSpec(DataType.long, "sample_rate", required=False),
    ])
    outputs = Schema([*(ColSpec(DataType.double, c) for c in classes), ColSpec(DataType.string, "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(sample_rate: int) -> pd.DataFrame:
    """A short generated vowel-like waveform (no file needed to try the model)."""
    from affectflow.synth import utterance

    wave = utterance("neutral", speaker=1, seed=0, sr=sample_rate, duration=EXAMPLE_SECONDS)
    return pd.DataFrame({"audio": [wave.astype(np.float32).tolist()], "sample_rate": [sample_rate]})


def requirements(feature: str) -> list[str]:
    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "pydantic>=2.5", "pyyaml",
            "soundfile", "soxr", f"mlflow=={__import__('mlflow').__version__}"]
    return [*reqs, "opensmile"] if feature == "egemaps" else reqs


def log_pyfunc(model_dir: str | Path, name: str = "model", registered_model_name: str | None = None) -> Any:
    """Log the model folder as a pyfunc into the active run; returns MLflow's ModelInfo."""
    import mlflow

    import affectflow
    from affectflow.inference import read_meta

    meta = read_meta(model_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=AffectflowPyfunc(),
        artifacts={MODEL_ARTIFACT: str(Path(model_dir).resolve())},
        code_paths=[str(Path(affectflow.__file__).parent)],
        signature=signature(list(meta["classes"])),
        input_example=input_example(int(meta["audio"]["sample_rate"])),
        pip_requirements=requirements(str(meta["feature"])),
        registered_model_name=registered_model_name,
    )
