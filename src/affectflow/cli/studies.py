"""`affectflow ablate <study>`: the studies, one sub-command each.

A study runs stages many times under a protocol (folds, seeds, conditions) and writes a table,
PNGs and JSON beside its runs; its settings live in params.yaml's `studies` section, which no
pipeline stage reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from affectflow.cli import Handler, command, wd
from affectflow.config import Params, load_params

STUDIES: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {}


def study(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register `affectflow ablate <name>`."""
    def deco(fn: Handler) -> Handler:
        STUDIES[name] = (help_text, fn, add_args)
        return fn
    return deco


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, help="manifest (default: <workdir>/ingest/manifest.parquet)")
    p.add_argument("--features", type=Path, help="features folder (default: <workdir>/features)")


def _augmentation_args(p: argparse.ArgumentParser) -> None:
    _io_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ablate_augmentation)")


@study("augmentation", "no / unfiltered / filtered augmentation, full and low-resource, mean ± std over seeds on "
       "speaker-independent folds", _augmentation_args)
def _augmentation(params: Params, a: argparse.Namespace) -> int:
    from affectflow.studies.augmentation import ablate_augmentation

    res = ablate_augmentation(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                              a.features or wd(params, "features"), a.out or wd(params, "ablate_augmentation"))
    print(res.table_md)
    print(f"\nwritten: {res.table_path} (cells under {res.out_dir})")
    return 0


def _dann_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ablate_dann); its ingest/ and "
                                            "features/ are reused by later runs")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="subset of studies.dann.conditions (source_only corpus_std target_bn dann dann_selected "
                        "dann_finetuned dann_corpus_std dann_augment)")


@study("dann", "cross-corpus table: source-only, per-corpus standardisation, DANN, DANN + augmentation; mean ± std "
       "over seeds on the target's held-out speakers", _dann_args)
def _dann(params: Params, a: argparse.Namespace) -> int:
    from affectflow.studies.dann import run_ablation, table_md

    out = a.out or wd(params, "ablate_dann")
    res = run_ablation(params, out, conditions=a.conditions)
    print(table_md(res))
    print(f"written: {Path(out) / 'table.md'}, {Path(out) / 'results.json'}, {Path(out) / 'ablation.png'}")
    return 0


def _generalization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ablate_generalization); its ingest/, "
                                            "features/ and cells/ are reused by later runs")
    p.add_argument("--conditions", nargs="+", metavar="NAME", help="subset of studies.generalization.conditions")


@study("generalization", "leave-one-corpus-out: train on the other corpora, score every clip of each held-out "
       "corpus; mean ± std over seeds per corpus and over corpora", _generalization_args)
def _generalization(params: Params, a: argparse.Namespace) -> int:
    from affectflow.studies.generalization import run_study

    res = run_study(params, a.out or wd(params, "ablate_generalization"), conditions=a.conditions)
    print(res.table_md)
    print(f"written: {res.out_dir / 'table.md'}, {res.out_dir / 'results.json'}, {res.out_dir / 'generalization.png'}")
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    for name, (help_text, _fn, add_args) in sorted(STUDIES.items()):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        # Accept --params / --set after the study name too (argparse only knows them before it).
        sp.add_argument("--params", dest="study_params", default=None, help=argparse.SUPPRESS)
        sp.add_argument("--set", dest="study_overrides", action="append", default=[], help=argparse.SUPPRESS)


@command("ablate", "studies: " + ", ".join(sorted(STUDIES)), _add_args)
def _dispatch(params: Params, a: argparse.Namespace) -> int:
    if a.study_params is not None or a.study_overrides:
        params = load_params(a.study_params or a.params, [*a.overrides, *a.study_overrides])
    return STUDIES[a.study][1](params, a)
