"""`affectflow <stage>`: one subcommand per stage, each a thin call into the library.

Every subcommand reads params.yaml (`--params`), accepts `--set key=value` overrides, prints a
short summary and writes a JSON summary beside its outputs. Default paths follow the workdir
layout (`paths.workdir`): ingest/, validation/, features/, augment/, pretrain/, train/, evaluate/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affectflow.config import ConfigError, Params, load_params

Handler = Callable[[Params, argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = (help_text, fn, args)
        return fn

    return deco


def wd(params: Params, *parts: str) -> Path:
    return params.workdir().joinpath(*parts)


def print_summary(title: str, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.pretty import Pretty

    Console(stderr=False).print(f"[bold]{title}[/bold]", Pretty(summary, expand_all=False))


# ----------------------------------------------------------------------------- stages
def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: <workdir>/ingest)")


@command("ingest", "corpora -> manifest.parquet with speaker-independent splits", _ingest_args)
def _ingest(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.ingest import ingest

    res = ingest(params, a.out or wd(params, "ingest"))
    print_summary(f"manifest: {res.manifest}", res.summary)
    return 0


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path)
    p.add_argument("--features", type=Path, help="features folder to check too (optional)")
    p.add_argument("--out", type=Path)


@command("validate", "Great Expectations gate on the manifest (and features)", _validate_args)
def _validate(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.validate import validate

    res = validate(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                   a.out or wd(params, "validation"), features_dir=a.features)
    print_summary(f"gate {'PASSED' if res.passed else 'FAILED'}: {res.report_md}", res.summary)
    return 0 if res.passed else 1


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path)
    p.add_argument("--out", type=Path)


@command("features", "log-mel and eGeMAPS features into the content-addressed store", _features_args)
def _features(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.features import extract_features

    res = extract_features(params, a.manifest or wd(params, "ingest", "manifest.parquet"),
                           a.out or wd(params, "features"))
    print_summary(f"features: {res.index}", res.summary)
    return 0


def _model_io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path)
    p.add_argument("--features", type=Path)
    p.add_argument("--out", type=Path)


def _train_args(p: argparse.ArgumentParser) -> None:
    _model_io_args(p)
    p.add_argument("--pretrained", type=Path, help="DANN encoder folder to fine-tune")
    p.add_argument("--synthetic", type=Path, help="augment output folder (kept synthetic samples)")
    p.add_argument("--folds", action="store_true", help="k-fold mode: mean ± std over speaker folds")


@command("train", "train the recognizer with Ray Train", _train_args)
def _train(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.train import stage as T

    manifest = a.manifest or wd(params, "ingest", "manifest.parquet")
    features = a.features or wd(params, "features")
    if a.folds:
        res = T.train_folds(params, manifest, features, a.out or wd(params, "train_folds"))
        print_summary("k-fold", res)
        return 0
    tr = T.train(params, manifest, features, a.out or wd(params, "train"),
                 pretrained=a.pretrained, synthetic=a.synthetic)
    print_summary(f"model: {tr.model_dir}", tr.summary)
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    _model_io_args(p)
    p.add_argument("--model", type=Path, help="trained model folder (default: <workdir>/train/model)")


@command("evaluate", "UAR / WA / macro-F1 with CIs, confusion matrix, cross-corpus", _evaluate_args)
def _evaluate(params: Params, a: argparse.Namespace) -> int:
    from affectflow.stages.evaluate import evaluate

    res = evaluate(params, a.model or wd(params, "train", "model"),
                   a.manifest or wd(params, "ingest", "manifest.parquet"),
                   a.features or wd(params, "features"), a.out or wd(params, "evaluate"))
    print_summary("evaluation", res)
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="affectflow " + _version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _fn, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
        add_args(p)
    return parser


def _version() -> str:
    from affectflow import __version__

    return __version__


# Subcommand groups that live in their own modules; each registers itself with @command on import.
EXTENSIONS = (
    "affectflow.cli.augment",   # augment, ablate augmentation
    "affectflow.cli.pretrain",  # pretrain, ablate dann
    "affectflow.cli.registry",  # register, registry list|describe|promote|rollback
    "affectflow.cli.pipeline",  # pipeline compile|run|upload|submit|schedule
    "affectflow.cli.predict",   # predict
)


def _load_extensions() -> None:
    import importlib

    for mod in EXTENSIONS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _help, fn, _ = COMMANDS[args.command]
    try:
        return fn(params, args)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        # Known failure kinds carry messages that name the file and the field.
        print(f"error: {e}", file=sys.stderr)
        return 1


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


if __name__ == "__main__":
    sys.exit(main())
