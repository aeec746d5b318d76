"""The HTTP client of a scoring server (`mlflow models serve`): payload and POST."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


# ----------------------------------------------------------------------------- serving client
def invocations_payload(waves: Sequence[np.ndarray] | None = None, sample_rate: int | None = None, *,
                        files: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Body for `POST /invocations` of `mlflow models serve`, in MLflow's `dataframe_split` form,
    matching the pyfunc signature (`affectflow.serving.pyfunc`). Paths are never sent: a path only means
    something on the server's own disk. Either

    waves + sample_rate: mono float waveforms as JSON lists (`audio`, `sample_rate`), for audio
        that exists only in memory; or
    files: the files' own encoded bytes, base64 (`audio_b64`); the server decodes them, mixes to
        mono and resamples as for a path. The body is several times smaller than the samples as
        JSON floats (figures in benchmarks/RESULTS.md)."""
    if files is not None:
        if waves is not None:
            raise ValueError("invocations_payload: give waves or files, not both")
        return {"dataframe_split": {"columns": ["audio_b64"],
                                    "data": [[base64.b64encode(Path(f).read_bytes()).decode("ascii")] for f in files]}}
    if waves is None or sample_rate is None:
        raise ValueError("invocations_payload: give waves with their sample_rate, or files")
    return {"dataframe_split": {"columns": ["audio", "sample_rate"],
                                "data": [[np.asarray(w, np.float64).round(7).tolist(), int(sample_rate)]
                                         for w in waves]}}


def post_invocations(url: str, payload: dict[str, Any], timeout: float = 60.0) -> pd.DataFrame:
    """POST a payload to a scoring server's /invocations; its predictions as a DataFrame."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}/invocations: HTTP {e.code}: {e.read().decode(errors='replace')[:2000]}") from None
    return pd.DataFrame(body["predictions"])
