"""Reading params.yaml: YAML with duplicate keys refused, dotted overrides, one validation, and
errors that name the file (or the override) and the key; canonical YAML out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from affectflow.config.base import ConfigError
from affectflow.config.params import Params


def _format_error(err: ValidationError, source: str, overrides: Mapping[str, Any] | None = None) -> str:
    """One line per problem; a problem caused by an override names the override, not the file."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        given = next((k for k in (overrides or {}) if key == k or key.startswith(k + ".")), None)
        where = f"override {given}={_show(overrides[given])}" if given is not None and overrides else source
        lines.append(f"{where}: {key}: {msg}")
    if len(lines) == 1:
        return lines[0]
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, raw = item.split("=", 1)
    return key.strip(), parse_yaml(raw, f"override '{item}'")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", None)  # the text names both lines
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-4` (no dot) as a string, which a strict float
# field would refuse; every YAML 1.2 tool reads it as 0.0001.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data, with duplicate keys as errors; errors name `source`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:  # one line: PyYAML's own text quotes the offending lines below
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{source}: not valid YAML: {what}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def params_from_tree(tree: Any, source: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Params:
    """Validate a parsed params tree (+ dotted overrides) once; errors name the file or the override."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    items = dict(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    for key, value in items.items():
        _set_dotted(tree, key, value)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, items)) from None


def load_params(
    path: str | Path | None = "params.yaml",
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> Params:
    """Load params.yaml (missing file -> defaults), apply dotted overrides, validate once."""
    tree: Any = {}
    source = str(path) if path else "<defaults>"
    if path is not None and Path(path).exists():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        tree = parse_yaml(text, source)
    elif path is not None and str(path) != "params.yaml":
        raise ConfigError(f"{source}: file not found")
    return params_from_tree(tree, source, overrides)


def params_from_text(text: str, source: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Params:
    """Params from YAML text (a pipeline's compiled-in params.yaml), then overrides."""
    return params_from_tree(parse_yaml(text, source), source, overrides)


def with_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """A validated copy of `params` with dotted keys replaced (`train.seed` -> 3): how studies and
    tests derive per-run settings without re-reading params.yaml. An unknown key is an error."""
    tree = params.model_dump(mode="json")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key}: unknown parameter (no section '{part}')")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {key}: unknown parameter")
        node[leaf] = value
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, "overrides", dict(overrides))) from None


class SortedDumper(yaml.SafeDumper):
    """A YAML dumper whose mappings are always in sorted key order: text that depends on the data
    only, not on process state (`oyaml`, which openSMILE imports, patches PyYAML's dict output)."""


SortedDumper.add_representer(
    dict, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", sorted(data.items(), key=lambda kv: str(kv[0]))))


def yaml_text(value: Any, flow: bool = False) -> str:
    """`value` as canonical YAML (sorted keys); `flow`: one line, `[a, b]` / `{k: v}` style (never
    wrapped: a run-form default must stay on its line of the IR's comment header)."""
    return yaml.dump(value, Dumper=SortedDumper, default_flow_style=flow, sort_keys=True,
                     width=float("inf") if flow else 80)


def params_yaml(params: Params) -> str:
    """params as YAML text, sections in file order (what `params_from_text` reads back)."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def flatten(params: Params) -> dict[str, Any]:
    """Flat `section.key` dict (for MLflow params and pipeline parameters)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", params.model_dump(mode="json"))
    return out
