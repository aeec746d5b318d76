"""`affectflow pretrain` (DANN encoder pretraining) and `affectflow ablate dann` (the cross-corpus table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from affectflow.cli import command, print_summary, wd
from affectflow.cli.ablate import register_study
from affectflow.config import Params


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="manifest (default: <workdir>/ingest/manifest.parquet)")
    p.add_argument("--features", type=Path, help="features folder (default: <workdir>/features)")
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/pretrain; the encoder is <out>/encoder)")


@command("pretrain", "DANN: domain-adversarial encoder pretraining on labelled source + unlabelled target corpora",
         _pretrain_args)
def _pretrain(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.pretrain.stage import pretrain

    res = pretrain(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                   a.features or wd(params, "features"), a.out or wd(params, "pretrain"))
    print_summary(f"encoder: {res.encoder_dir} (report: {res.report_md})",
                  {**res.summary, "mlflow_run_id": res.mlflow_run_id})
    return 0


def _ablation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ablate_dann); its ingest/ and "
                                            "features/ are reused by later runs")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="subset of pretrain.ablation.conditions (source_only corpus_std target_bn dann dann_corpus_std "
                        "dann_augment)")


def _ablation(params: Params, a: argparse.Namespace) -> int:
    from affectflow.studies.dann import run_ablation, table_md

    out = a.out or wd(params, "ablate_dann")
    res = run_ablation(params, out, conditions=a.conditions)
    print(table_md(res))
    print(f"written: {Path(out) / 'table.md'}, {Path(out) / 'results.json'}, {Path(out) / 'ablation.png'}")
    return 0


register_study("dann", "cross-corpus table: source-only, per-corpus standardisation, DANN, DANN + augmentation; "
               "mean ± std over seeds on the target's held-out speakers", _ablation, _ablation_args)
