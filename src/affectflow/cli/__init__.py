"""affectflow: speech emotion recognition stages, studies, registry, prediction and pipelines.

One subcommand per stage (from the stage table) plus the studies, the
registry, prediction and, from the `pipelines` package, the Kubeflow pipeline commands.

Every subcommand reads params.yaml (`--params`), accepts `--set key=value` overrides, prints a
short summary, and turns every known failure into one `error: ...` line and a non-zero exit
(`--debug` shows the traceback). Command groups register with `@command`; packages outside the
library add groups through the `affectflow.cli` entry-point group (that is how `pipelines`, which
imports the library and not the other way round, adds `affectflow pipeline ...`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from affectflow.config import ConfigError, Params, load_params

Handler = Callable[[Params, argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {}
ENTRY_POINT_GROUP = "affectflow.cli"
DEFAULT_PARAMS = "params.yaml"
BUILTIN = (
    "affectflow.cli.stages",    # ingest ... register, step, dvc
    "affectflow.cli.studies",   # ablate augmentation | dann | ...
    "affectflow.cli.registry",  # registry list|describe|promote|rollback
    "affectflow.cli.predict",   # predict
    "affectflow.cli.monitor",   # monitor (the prediction log vs the training data)
)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="affectflow " + _version())
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _fn, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default=DEFAULT_PARAMS, help="parameters file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
        p.add_argument("--defaults", action="store_true",
                       help="run on the built-in defaults (plus --set) when there is no params file, or it is empty")
        add_args(p)
    for name, module in LAZY.items():
        if name not in COMMANDS:
            sub.add_parser(name, help=f"`affectflow {name} --help` for its commands (from {module})")
    return parser


def _version() -> str:
    from affectflow import __version__

    return __version__


LAZY: dict[str, str] = {}
"""Entry-point command groups not imported for this invocation: name -> module (see `load_commands`)."""


def load_commands(argv: Sequence[str] | None = None) -> None:
    """The built-in command groups, then the `affectflow.cli` entry points (modules that register
    their commands with `@command` on import). With `argv`, an entry point is imported only when its
    name is the command asked for: `affectflow pipeline` imports kfp (about 1 s), `affectflow
    --help` or `affectflow predict` should not; the others get a placeholder in the help."""
    for mod in BUILTIN:
        importlib.import_module(mod)
    asked = _command_name(argv) if argv is not None else None
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if argv is None or ep.name == asked:
            ep.load()
            LAZY.pop(ep.name, None)
        elif ep.name not in COMMANDS:
            LAZY[ep.name] = ep.value


def _command_name(argv: Sequence[str]) -> str | None:
    """The first argument that is not a top-level option: the command."""
    return next((a for a in argv if not a.startswith("-")), None)


def known_errors() -> tuple[type[BaseException], ...]:
    """Failure kinds whose messages name the file and the field: one `error:` line each."""
    kinds: list[type[BaseException]] = [FileNotFoundError, ValueError, RuntimeError, KeyError, OSError]
    try:
        from mlflow.exceptions import MlflowException

        kinds.append(MlflowException)
    except ImportError:  # pragma: no cover - mlflow is a dependency
        pass
    return tuple(kinds)


def _message(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip() or type(e).__name__


def params_file_problem(path: str, defaults: bool) -> str | None:
    """Why the run would silently use the built-in defaults: no params.yaml where it is looked for,
    or a file without settings. None when there is a file with settings, or `--defaults` says so."""
    if defaults:
        return None
    p = Path(path)
    if not p.exists():
        if path != DEFAULT_PARAMS:
            return None  # load_params names the missing file
        return (f"no {DEFAULT_PARAMS} in {Path.cwd()}: pass --params FILE, or --defaults to run on the built-in "
                "defaults (the repository's params.yaml lists them)")
    try:
        import yaml

        empty = p.is_file() and yaml.safe_load(p.read_text(encoding="utf-8")) in (None, {})
    except Exception:  # load_params reports a file it cannot read or parse, naming it
        return None
    return f"{path}: no settings in it (empty); fill it in, or pass --defaults to run on the built-in defaults" \
        if empty else None


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None  # the process exits when this returns (tests pass argv)
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    finally:
        if from_command_line:
            from affectflow.runtime.imports import freeze_before_exit

            freeze_before_exit()


def _run(argv: list[str]) -> int:
    load_commands(argv)
    args = build_parser().parse_args(argv)
    if problem := params_file_problem(args.params, args.defaults):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        params = load_params(args.params, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _help, fn, _ = COMMANDS[args.command]
    try:
        return fn(params, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except known_errors() as e:
        if args.debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
