"""`affectflow augment` (the stage) and `affectflow ablate augmentation` (the study)."""

from __future__ import annotations

import argparse
from pathlib import Path

from affectflow.cli import command, print_summary, wd
from affectflow.cli.ablate import register_study
from affectflow.config import Params


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="manifest (default: <workdir>/ingest/manifest.parquet)")
    p.add_argument("--features", type=Path, help="features folder (default: <workdir>/features)")


def _augment_args(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/augment)")
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")


@command("augment", "train a class-conditional generator, generate, score and filter synthetic samples",
         _augment_args)
def _augment(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.augment.stage import augment

    res = augment(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                  a.features or wd(params, "features"), a.out or wd(params, "augment"), track=not a.no_track)
    print_summary(f"synthetic set: {res.synthetic} (report: {res.report_md})",
                  {**res.summary, "mlflow_run_id": res.mlflow_run_id})
    return 0


def _ablation_args(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ablate_augmentation)")


def _ablation(params: Params, a: argparse.Namespace) -> int:
    from affectflow.studies.augmentation import ablate_augmentation

    res = ablate_augmentation(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                              a.features or wd(params, "features"), a.out or wd(params, "ablate_augmentation"))
    print(res.table_md)
    print(f"\nwritten: {res.table_path} (cells under {res.out_dir})")
    return 0


register_study("augmentation", "no / unfiltered / filtered augmentation, full and low-resource, mean ± std "
               "over seeds on speaker-independent folds", _ablation, _ablation_args)
