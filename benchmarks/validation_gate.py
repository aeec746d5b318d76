"""Time the data gate on a real manifest: GX import, the gate with and without audio decoding, and
(optionally) with a features folder. Prints a table; the unit tests never assert on timings.

    .venv/bin/python benchmarks/validation_gate.py                       # ingests RAVDESS + EmoDB first
    .venv/bin/python benchmarks/validation_gate.py --manifest artifacts/ingest/manifest.parquet \\
        --features artifacts/features
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--manifest", type=Path, help="existing manifest (default: ingest RAVDESS + EmoDB)")
    ap.add_argument("--features", type=Path, help="features folder to include in the last row")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    a = ap.parse_args()

    t0 = time.perf_counter()
    import affectflow.stages.validate as V  # great_expectations comes with it

    rows = [("import affectflow.stages.validate (GX)", time.perf_counter() - t0, "")]
    from affectflow.config import load_params
    from affectflow.stages.ingest import ingest

    tmp = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    params = load_params(a.params, {"paths.workdir": str(tmp), "paths.data_root": a.data_root})
    manifest = a.manifest
    if manifest is None:
        params = load_params(a.params, {
            "paths.workdir": str(tmp), "paths.data_root": a.data_root,
            "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"},
                               {"name": "emodb", "adapter": "emodb", "root": "emodb", "role": "target"}]})
        t = time.perf_counter()
        manifest = ingest(params, tmp / "ingest").manifest
        rows.append(("ingest (for reference)", time.perf_counter() - t, ""))

    for decode in (False, True):
        params.validation.check_decode = decode
        t = time.perf_counter()
        res = V.validate(params, manifest, tmp / f"validation-{decode}")
        rows.append((f"gate, manifest only, check_decode={decode}", time.perf_counter() - t,
                     f"{res.summary['clips']} clips, {res.summary['checks']} checks, passed={res.passed}"))
    if a.features is not None:
        t = time.perf_counter()
        res = V.validate(params, manifest, tmp / "validation-features", features_dir=a.features)
        rows.append(("gate, manifest + features", time.perf_counter() - t,
                     f"{res.summary['checks']} checks, passed={res.passed}"))

    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>8}  notes")
    for name, sec, note in rows:
        print(f"{name:<{width}}  {sec:8.2f}  {note}")


if __name__ == "__main__":
    main()
