"""`affectflow predict PATH...`: class probabilities for audio files, folders, manifests or s3:// URIs.

Thin wrapper over `affectflow.serving.predict`. The predictions go to stdout (or --out) so they can be piped;
per-file errors and the summary line go to stderr. Exit code 1 when any file failed, unless
--allow-errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from affectflow.cli import command
from affectflow.config import Params

FORMATS = ("json", "csv")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="audio file, folder (searched recursively), manifest (.csv / .parquet with a 'path' "
                        "column) or s3:// object or prefix (fetched into a temporary folder; rows keep the URI)")
    p.add_argument("--model", dest="model_uri",
                   help="MLflow model URI (models:/<name>@champion, models:/<name>/<version>, runs:/<run>/model, "
                        "...) or a local model folder (default: predict.model_uri, else "
                        "models:/<registry.model_name>@champion on tracking.uri)")
    p.add_argument("--out", type=Path, help="write the predictions to this file (default: stdout)")
    p.add_argument("--format", choices=FORMATS,
                   help="json or csv (default: from the --out suffix, else json)")
    p.add_argument("--batch-size", type=int, help="clips (or windows) per forward pass (default: predict.batch_size)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: predict.device")
    p.add_argument("--timeline", action="store_true",
                   help="long recordings: per-segment probabilities over time (predict.timeline: window, hop, "
                        "smoothing) instead of one row per file; with --out, a PNG per recording beside it")
    p.add_argument("--allow-errors", action="store_true",
                   help="exit 0 even when some files could not be predicted (they are still listed with the reason)")


def output_format(requested: str | None, out: Path | None) -> str:
    if requested:
        return requested
    return "csv" if out is not None and out.suffix.lower() == ".csv" else "json"


@command("predict", "class probabilities for audio files, folders or manifests with a registered model",
         _predict_args)
def _predict(params: Params, a: argparse.Namespace) -> int:
    from affectflow.serving.predict import predict_paths, write_result

    updates = {k: v for k, v in (("batch_size", a.batch_size), ("device", a.device)) if v is not None}
    if updates:
        params = params.model_copy(update={"predict": params.predict.model_validate(
            {**params.predict.model_dump(), **updates})})
    if a.timeline:
        return _timeline(params, a)
    res = predict_paths(params, a.paths, model_uri=a.model_uri)
    write_result(res, a.out, output_format(a.format, a.out))
    n_failed = len(res.failed)
    where = f" -> {a.out}" if a.out else ""
    print(f"predicted {len(res.predictions) - n_failed}/{len(res.predictions)} files with {res.model_uri}{where}"
          + (f"; {n_failed} failed" if n_failed else "")
          + (f"; {len(res.without_speech)} without speech (status no_speech, no label)" if res.without_speech else ""),
          file=sys.stderr)
    return 1 if n_failed and not a.allow_errors else 0


def _timeline(params: Params, a: argparse.Namespace) -> int:
    import json

    from affectflow.serving.timeline import timelines_csv, timelines_json, write_timelines
    from affectflow.serving.timeline_files import timeline_paths

    res = timeline_paths(params, a.paths, model_uri=a.model_uri)
    fmt = output_format(a.format, a.out)
    if a.out is None:
        sys.stdout.write(timelines_csv(res.timelines) if fmt == "csv"
                         else json.dumps(timelines_json(res.timelines, res.model_uri), indent=2) + "\n")
        pngs = []
    else:
        pngs = write_timelines(res.timelines, res.model_uri, a.out, fmt)
    print(f"timelines of {len(res.timelines)}/{len(res.timelines) + len(res.failed)} files with {res.model_uri}"
          + (f" -> {a.out} (+ {len(pngs)} PNG)" if a.out else "") + (f"; {len(res.failed)} failed" if res.failed else ""),
          file=sys.stderr)
    return 1 if res.failed and not a.allow_errors else 0


def _deploy_stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "reset", "rebuild"),
                   help="show: what the deployment has seen and which statistics it uses now; reset: forget it "
                        "(back to the pooled training statistics until train.deploy_min_clips clips); rebuild: "
                        "recompute it from the prediction log (--log, default monitor.log / the workdir's)")
    p.add_argument("--log", help="rebuild: the prediction log (folder or s3:// prefix)")
    p.add_argument("--model", dest="model_uri", help="the deployed model (as for predict); default: predict.model_uri")
    p.add_argument("--path", help="the state file (JSON path or s3://); default: predict.deploy_stats, else "
                                  "<paths.workdir>/deploy_stats/<feature kind>-<feature key>.json")


@command("deploy-stats", "show or reset a deployment's running statistics of unknown-corpus audio",
         _deploy_stats_args)
def _deploy_stats(params: Params, a: argparse.Namespace) -> int:
    import json

    from affectflow.serving.deployment import Deployment, StateFile
    from affectflow.serving.predict import deploy_stats_location, load_backend
    from affectflow.storage.s3 import store_for

    if a.path:
        params = params.model_copy(update={"predict": params.predict.model_copy(update={"deploy_stats": a.path})})
    backend = load_backend(params, a.model_uri, deployment=False)  # a broken state can still be reset
    rec = getattr(backend, "rec", None)
    if rec is None:
        raise ValueError(f"model {backend.uri}: not an affectflow recognizer, it keeps no deployment statistics")
    where = deploy_stats_location(params, rec.meta)
    if a.action == "reset":
        existed = StateFile(where, store_for(params)).delete()
        print(f"{where}: {'reset' if existed else 'nothing to reset'}; unknown audio uses the pooled training "
              f"statistics until {rec.meta.deploy_normalization.min_clips} clips", file=sys.stderr)
        return 0
    if a.action == "rebuild":
        from affectflow.serving.deployment import StateFile
        from affectflow.serving.predict_log import default_location
        from affectflow.serving.prediction_log import read_log, rebuild_deployment

        log = a.log or default_location(params)
        state = rebuild_deployment(rec.meta, read_log(log, store=store_for(params)))
        StateFile(where, store_for(params)).write(state)
        print(f"{where}: rebuilt from the log {log}: {state.clips} scored windows (a clip of several counts "
              "each)", file=sys.stderr)
        return 0
    state = Deployment(rec.meta, where, store_for(params)).stats
    print(json.dumps({"path": where, "mode": rec.meta.deploy_normalization.mode, **state.summary()}, indent=2))
    return 0
