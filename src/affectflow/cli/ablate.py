"""`affectflow ablate <study>`: one CLI command shared by every ablation study.

Several extension modules contribute studies (augmentation, dann, ...). Registering `ablate` with
`@command` from each would let the last import win, so modules call `register_study` instead: the
first call creates the `ablate` command, later calls add their study as another sub-command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from affectflow.cli import COMMANDS, Handler, command
from affectflow.config import Params

STUDIES: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {}


def _add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    for name, (help_text, _fn, add_args) in sorted(STUDIES.items()):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        # Accept --params / --set after the study name too (argparse only knows them before it).
        sp.add_argument("--params", dest="study_params", default=None, help=argparse.SUPPRESS)
        sp.add_argument("--set", dest="study_overrides", action="append", default=[], help=argparse.SUPPRESS)


def _dispatch(params: Params, a: argparse.Namespace) -> int:
    if a.study_params is not None or a.study_overrides:
        from affectflow.config import load_params

        params = load_params(a.study_params or a.params, [*a.overrides, *a.study_overrides])
    return STUDIES[a.study][1](params, a)


def register_study(name: str, help_text: str, handler: Handler,
                   add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None) -> None:
    """Add `affectflow ablate <name>`; safe to call from any number of extension modules."""
    STUDIES[name] = (help_text, handler, add_args)
    if COMMANDS.get("ablate", (None, None))[1] is not _dispatch:
        command("ablate", "ablation studies: " + ", ".join(sorted(STUDIES)), _add_args)(_dispatch)
    else:
        COMMANDS["ablate"] = ("ablation studies: " + ", ".join(sorted(STUDIES)), _dispatch, _add_args)
