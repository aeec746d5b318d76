"""A grown manifest computes only its new clips: the features stage on two corpora, then on all four
with the two-corpus store as `features.previous` (what a pipeline run does with the last run's store).

Kinds as a run computes them (params.yaml: the model's kind, ComParE). Records wall and CPU seconds,
clips computed vs reused, and the load (`uptime`) before and after: on a shared box the wall-clock
figures mostly measure the neighbours.

    .venv/bin/python benchmarks/features_grown.py            # ../shared/data, params.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from features import measure  # benchmarks/features.py: wall and CPU seconds (children included)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--first", nargs="+", default=["ravdess", "emodb"], help="corpora of the first run")
    a = ap.parse_args()

    from affectflow.config import load_params, with_overrides
    from affectflow.contracts.manifest import read_manifest, write_manifest
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.runner import with_feature_kinds

    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="features-grown-"))
    params = with_feature_kinds(load_params(a.params, {"paths.workdir": str(tmp), "paths.data_root": a.data_root,
                                                              "features.store": ""}))  # reuse only what --previous says
    manifest = ingest(params, tmp / "ingest").manifest
    df = read_manifest(manifest)
    first = tmp / "first.parquet"
    write_manifest(df[df["corpus"].isin(a.first)].reset_index(drop=True), first)
    out: dict[str, object] = {"kinds": params.features.kinds, "load_before": uptime()}
    wall, cpu, res = measure(lambda: extract_features(params, first, tmp / "store-2"))
    out["first"] = {"corpora": a.first, "clips": res.summary["clips"], "wall_s": round(wall, 1),
                    "cpu_s": round(cpu, 1), "kinds": res.summary["kinds"],
                    "first_clip_seconds": res.summary.get("first_clip_seconds")}
    grown = with_overrides(params, {"features.previous": str(tmp / "store-2")})
    wall, cpu, res = measure(lambda: extract_features(grown, manifest, tmp / "store-4"))
    out["grown"] = {"corpora": sorted(df["corpus"].unique()), "clips": res.summary["clips"], "wall_s": round(wall, 1),
                    "cpu_s": round(cpu, 1), "kinds": res.summary["kinds"],
                    "audio_seconds_computed": res.summary["audio_seconds_computed"]}
    wall, cpu, res = measure(lambda: extract_features(params, manifest, tmp / "store-4"))
    out["warm"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "kinds": res.summary["kinds"]}
    out["load_after"] = uptime()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
