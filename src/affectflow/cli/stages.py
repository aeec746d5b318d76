"""`affectflow <stage>` for every row of the stage table, `affectflow step <stage>` (the same, as
dvc.yaml runs it: switches respected) and `affectflow dvc` (write or check dvc.yaml).

A stage's flags come from its row: `--<input>` per input artifact (default: its place in the
workdir), `--out` (default: `<workdir>/<output>`). A few stages have CLI-only extras below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from affectflow.cli import command, print_summary
from affectflow.config import Params
from affectflow.stages import STAGES, StageSpec

FLAGS = {"encoder": "pretrained", "evaluation": "metrics"}
"""CLI flag of an artifact where it differs from the artifact's name."""
HELP = {
    "manifest": "manifest.parquet (default: <workdir>/ingest/manifest.parquet)",
    "features": "feature store folder (default: <workdir>/features)",
    "synthetic": "augment output folder with synthetic.npz (default: <workdir>/augment, when not SKIPPED)",
    "encoder": "DANN encoder folder to fine-tune (default: <workdir>/pretrain/encoder, when not SKIPPED)",
    "model": "trained model folder (default: <workdir>/train/model)",
    "evaluation": "evaluate's folder or its metrics.json (default: <workdir>/evaluate)",
}


def _flag(art: str) -> str:
    return FLAGS.get(art, art)


def _stage_args(spec: StageSpec) -> Any:
    def add(p: argparse.ArgumentParser) -> None:
        for art in (*spec.inputs, *spec.optional):
            p.add_argument(f"--{_flag(art)}", dest=f"in_{art}", type=Path, help=HELP.get(art, art))
        p.add_argument("--out", type=Path, help=f"output folder (default: <workdir>/{spec.output})")
        for add_extra in EXTRA_ARGS.get(spec.name, ()):
            add_extra(p)
    return add


def _inputs(spec: StageSpec, a: argparse.Namespace) -> dict[str, Path | None]:
    return {art: getattr(a, f"in_{art}", None) for art in (*spec.inputs, *spec.optional)}


def _report(name: str, res: Any) -> int:
    summary = dict(getattr(res, "summary", {}) or {})
    passed = getattr(res, "passed", True)
    title = f"{name}: {res.out_dir}"
    if hasattr(res, "passed"):
        title = f"gate {'PASSED' if passed else 'FAILED'}: {res.report_md}"
    print_summary(title, summary)
    return 0 if passed else 1


def _stage_handler(spec: StageSpec) -> Any:
    def handle(params: Params, a: argparse.Namespace) -> int:
        from affectflow.stages.runner import run_stage

        special = EXTRA_HANDLERS.get(spec.name)
        if special is not None:
            code = special(params, a)
            if code is not None:
                return code
        res = run_stage(params, spec.name, _inputs(spec, a), a.out, respect_switch=False)
        return _report(spec.name, res)
    return handle


# ----------------------------------------------------------------------------- CLI-only extras
def _no_track(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")


def _folds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", action="store_true",
                   help="k-fold study: every speaker fold is the test set once; mean ± std (affectflow.studies.kfold)")


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", help="MLflow run that logged the model (default: model.json's mlflow.run_id)")
    p.add_argument("--model-uri", help="logged model URI, models:/<id> or runs:/<run>/<name> "
                                       "(default: the training run's logged model)")
    p.add_argument("--manifest", dest="rescore_manifest", type=Path,
                   help="manifest.parquet the model was evaluated on (default: <workdir>/ingest/manifest.parquet): "
                        "a champion scored on another test manifest is re-scored on this one")
    p.add_argument("--features", dest="rescore_features", type=Path,
                   help="feature store for the re-score (default: <workdir>/features)")
    p.add_argument("--no-rescore", action="store_true", help="never re-score the champion")
    # (`--rescore DIR`, the register row's optional input: a re-score made earlier, used as it is)


def _augment(params: Params, a: argparse.Namespace) -> int | None:
    if not a.no_track:
        return None
    from affectflow.stages.augment.stage import augment
    from affectflow.stages.runner import workdir_inputs

    inp = workdir_inputs(params, "augment", _inputs(STAGES["augment"], a))
    res = augment(params, inp["manifest"], inp["features"], a.out or params.workdir() / "augment", track=False)
    return _report("augment", res)


def _train(params: Params, a: argparse.Namespace) -> int | None:
    if not a.folds:
        return None
    from affectflow.stages.runner import workdir_inputs
    from affectflow.studies.kfold import train_folds

    inp = workdir_inputs(params, "train", _inputs(STAGES["train"], a))
    print_summary("k-fold", train_folds(params, inp["manifest"], inp["features"],
                                        a.out or params.workdir() / "train_folds"))
    return 0


def _register(params: Params, a: argparse.Namespace) -> int | None:
    """The register tail as one command: rescore (when the manifest and store are at hand) ->
    register -> promote (when registry.auto_promote), the rows dvc.yaml and the DAG run."""
    from affectflow.contracts.workdir import Workdir
    from affectflow.stages.register import TAIL
    from affectflow.stages.runner import run_chain

    given = _inputs(STAGES["register"], a)
    wd = Workdir(params.workdir())
    manifest, features = a.rescore_manifest or wd.manifest, a.rescore_features or wd.features
    rescore = given.get("rescore") is None and not a.no_rescore and manifest.is_file() and features.is_dir()
    names = [n for n in TAIL if n != "rescore" or rescore]
    out = a.out
    out_dirs = {} if out is None else {"rescore": out / "rescore", "register": out, "promote": out / "promote"}
    res = run_chain(params, names, {**given, "manifest": manifest, "features": features}, out_dirs,
                    options={"register": {"run_id": a.run_id, "model_uri": a.model_uri}})
    reg = res["register"].summary
    promo = res["promote"].summary
    promoted = bool(promo.get("promoted"))
    reason = (promo.get("gate") or reg["gate"])["reason"]
    title = f"{reg['model_uri']} PROMOTED: {reason}" if promoted else f"{reg['model_uri']}: {reason}"
    print_summary(title, {"version": reg["version"], "aliases": promo.get("aliases", reg["aliases"]),
                          "champion": promo.get("champion", reg["champion"]),
                          **{k: reg[k] for k in ("previous_champion", "source", "note", "comparison")
                             if reg.get(k) is not None}})
    if not promoted and "was not scored on this test set" in reason:
        if not rescore and given.get("rescore") is None:
            print(f"the champion was not re-scored: {manifest} or {features} not found (or --no-rescore); run:\n"
                  f"  affectflow register --model {given.get('model') or wd.model} "
                  f"--metrics {given.get('evaluation') or wd.artifact('evaluation')} "
                  f"--manifest <manifest.parquet> --features <feature store>", file=sys.stderr)
        elif reg.get("rescore") and not reg["rescore"]["needed"]:
            print(f"the champion could not be re-scored: {reg['rescore']['reason']}", file=sys.stderr)
    return 0


EXTRA_ARGS = {"augment": (_no_track,), "train": (_folds,), "register": (_source,)}
EXTRA_HANDLERS = {"augment": _augment, "train": _train, "register": _register}

for _spec in STAGES.values():
    command(_spec.name, _spec.summary, _stage_args(_spec))(_stage_handler(_spec))


# ----------------------------------------------------------------------------- latent augmentation
def _latent_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help=HELP["model"])
    p.add_argument("--manifest", type=Path, help=HELP["manifest"])
    p.add_argument("--features", type=Path, help=HELP["features"])
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/augment_latent); the model with "
                                            "the retrained head is <out>/model")


@command("augment-latent", "latent-feature augmentation: a trained model's training clips as embeddings, new-style "
         "embeddings generated and filtered (augment.*), the head retrained on real + kept ones (augment.latent.*)",
         _latent_args)
def _augment_latent(params: Params, a: argparse.Namespace) -> int:
    from affectflow.contracts.workdir import Workdir
    from affectflow.stages.augment.latent import augment_latent

    wd = Workdir(params.workdir())
    res = augment_latent(params, a.model or wd.model, a.manifest or wd.manifest, a.features or wd.features,
                         a.out or params.workdir() / "augment_latent")
    print_summary(f"augment-latent: {res.model_dir}", res.summary)
    return 0


# ----------------------------------------------------------------------------- step and dvc
def _step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=list(STAGES), help="stage to run in the workdir layout")


@command("step", "run a stage in the workdir layout as dvc.yaml does (switched-off stages leave a SKIPPED "
         "placeholder)", _step_args)
def _step(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.runner import run_stage

    return _report(a.stage, run_stage(params, a.stage))


def _dvc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from the stage table")
    p.add_argument("--out", type=Path, help="file to write (default: dvc.yaml in the checkout)")


@command("dvc", "write dvc.yaml from the stage table (or --check that it is current)", _dvc_args)
def _dvc(params: Params, a: argparse.Namespace) -> int:
    from affectflow.orchestration.dvc import dvc_yaml, project_root
    from affectflow.storage import atomic_write_text

    root = project_root()
    target = a.out or root / "dvc.yaml"
    text = dvc_yaml(root)
    if a.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target} is stale: run `affectflow dvc`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    atomic_write_text(target, text)
    print(f"wrote {target} ({len(STAGES)} stages)")
    return 0
